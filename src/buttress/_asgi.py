"""ASGI types and the few helpers every middleware shares."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from http import HTTPStatus
from typing import Any

import orjson

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

#: The key under which the outermost buttress layer keeps the per-request record.
INFO_KEY = "buttress.request"

_REASONS = {s.value: s.phrase for s in HTTPStatus}


def reason(status: int) -> str:
    """The standard reason phrase for ``status`` (``"Error"`` for unknown codes)."""
    return _REASONS.get(status, "Error")


def get_header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower-case bytes), or None."""
    for key, value in headers:
        if key == name or key.lower() == name:
            return value
    return None


class RequestInfo:
    """What the layers of one request learn and share: made by the outermost layer.

    Kept in ``scope[INFO_KEY]`` so inner layers (metrics, errors, rate limiting) agree
    on the request id, the client IP, the route template and the final status without
    recomputing them.
    """

    __slots__ = (
        "client_ip",
        "request_id",
        "root_path",
        "route",
        "route_resolved",
        "sent",
        "start",
        "status",
        "trace_id",
    )

    def __init__(self, request_id: str, client_ip: str | None, root_path: str) -> None:
        self.request_id = request_id
        self.client_ip = client_ip
        self.root_path = root_path
        self.trace_id: str | None = None
        self.route: str | None = None
        self.route_resolved = False
        self.status = 0
        self.sent = 0  # response body bytes, counted by the context layer's send wrapper
        self.start = time.perf_counter()


def request_info(scope: Scope) -> RequestInfo | None:
    """The shared per-request record, when a buttress context layer is outside."""
    info: RequestInfo | None = scope.get(INFO_KEY)
    return info


def json_body(payload: Any) -> bytes:
    return orjson.dumps(payload)


async def send_json(
    send: Send,
    status: int,
    payload: Any,
    headers: Iterable[tuple[bytes, bytes]] = (),
    *,
    content_type: bytes = b"application/json",
    head: bool = False,
) -> None:
    """Send a complete JSON response; ``head`` keeps the headers and drops the body."""
    body = orjson.dumps(payload)
    out: Headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode("ascii")),
    ]
    out.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": b"" if head else body})
