"""What the rate limiter answers: the 429 and 503 bodies and the rate-limit headers."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import structlog

from buttress._asgi import Headers, Send
from buttress.logs import LogThrottle
from buttress.ratelimit_rules import Limit, Rule

__all__ = ["ascii_number", "check_shared", "log_rejection", "rate_headers", "send_body"]

_log = structlog.get_logger("buttress.ratelimit")


def rate_headers(style: str, limit: Limit, remaining: int, reset: int) -> Headers:
    """``RateLimit-*`` (``ietf``), ``X-RateLimit-*`` (``x``, reset as a Unix time) or both."""
    out: Headers = []
    if style != "x":
        out += [
            (b"ratelimit-limit", limit.amount),
            (b"ratelimit-remaining", ascii_number(remaining)),
            (b"ratelimit-reset", ascii_number(reset)),
        ]
    if style != "ietf":  # the de-facto X-RateLimit-* names; reset as a Unix time
        out += [
            (b"x-ratelimit-limit", limit.amount),
            (b"x-ratelimit-remaining", ascii_number(remaining)),
            (b"x-ratelimit-reset", str(int(time.time()) + reset).encode("ascii")),
        ]
    return out


def log_rejection(route: str, limit: Limit, key: str, counter: Any, throttle: LogThrottle) -> None:
    """Count a rejection and log it, throttled (the line says how many it stands for)."""
    counter.inc()
    suppressed = throttle.allow()
    if suppressed is not None:
        _log.warning(
            "rate_limit_exceeded",
            limit=str(limit.item),
            route=route,
            key=key,
            suppressed=suppressed,
        )


def check_shared(rules: Iterable[Rule]) -> None:
    """Routes of one ``shared`` group must agree on the limit they share."""
    seen: dict[str, Rule] = {}
    for rule in rules:
        first = seen.setdefault(rule.name, rule)
        if first is not rule and _specs(first) != _specs(rule):
            raise ValueError(
                f"limits[{rule.label!r}] and limits[{first.label!r}] share "
                f"{rule.name.removeprefix('shared:')!r} but not the same limit; give every "
                "route of a shared group the same limit string."
            )


def _specs(rule: Rule) -> list[str]:
    return [str(limit.item) for limit in rule.limits]


#: The header values 0..4095 as bytes, built on first use (most counts and resets fit).
_NUMBERS: list[bytes] = []


def ascii_number(number: int) -> bytes:
    if not _NUMBERS:
        _NUMBERS.extend(str(n).encode("ascii") for n in range(4096))
    return _NUMBERS[number] if 0 <= number < 4096 else str(number).encode("ascii")


async def send_body(send: Send, status: int, body: bytes, extra: Headers, head: bool) -> None:
    headers: Headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode("ascii")),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})
