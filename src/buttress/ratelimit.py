"""Rate limiting on ``limits``: per-route limits, one limit across instances, a 429 that keeps the contract.

The decision is made before the app runs, so the middleware matches its own route
patterns (``METHOD /path/{name}``, ``/files/{name:path}``) against every spelling of the
path some framework routes to the same handler (see ``ratelimit_rules``), and works the
same under every framework. A request is charged to the limits of the first pattern it
matches, else to the default limit; a route with its own limit is *not* also charged the
default unless ``charge_default=True``. With a header key, ``ip_limit`` charges the
client IP too, so inventing keys does not escape limiting.

Rejections and outages are logged through ``LogThrottle``: an attack never turns into one
log line per request. Storages and outages: see ``ratelimit_storage``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Final

import structlog
from prometheus_client import CollectorRegistry

from buttress._asgi import ASGIApp, Headers, Message, Receive, Scope, Send
from buttress._registry import shared_counter
from buttress._request import RATELIMIT_KEY, ROUTE_KEY
from buttress.config import IPNetwork, option
from buttress.logs import LogThrottle
from buttress.ratelimit_memory import MemoryStore
from buttress.ratelimit_rules import (
    ClientKeys,
    Limit,
    RouteTable,
    Rule,
    parse_limits,
    rules_from,
)
from buttress.ratelimit_storage import (
    Limiter,
    StorageDown,
    close_storage,
    storage_for,
    warn_if_memory_with_workers,
)

__all__ = ["RateLimitMiddleware", "Rejection", "warn_if_memory_with_workers"]

KeyFunc = Callable[[Scope], "str | Awaitable[str | None] | None"]
Plan = tuple[tuple[Rule, Limit, dict[str, Any], int], ...]

_UNAVAILABLE_BODY: Final = b'{"detail":"Rate limiter unavailable"}'
_log = structlog.get_logger("buttress.ratelimit")


class Rejection:
    """Why a request may not go on: a 429 (limit exceeded) or a 503 (storage down, fail-closed)."""

    __slots__ = ("detail", "headers", "status")

    def __init__(self, status: int, detail: str, headers: dict[str, str]) -> None:
        self.status = status
        self.detail = detail
        self.headers = headers


class RateLimitMiddleware:
    """Answers 429 (JSON detail, ``Retry-After``, ``RateLimit-*``) once a client exceeds a limit.

    ``websocket`` and ``lifespan`` scopes pass through unlimited. Exempt paths and allowed
    clients pass through without touching the storage.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        limits: Mapping[str, str] | str | None = None,
        default: str = "",
        key: str | KeyFunc = "ip",
        ip_limit: str = "",
        key_secret: str | None = None,
        ipv6_prefix: int = 64,
        max_keys: int = 200_000,
        storage: Any = "memory://",
        strategy: str = "sliding-window-counter",
        headers: bool = True,
        fail_open: bool = True,
        exempt: Iterable[str] | str = ("/metrics",),
        allow: Iterable[str] | str = (),
        trusted_proxies: Iterable[IPNetwork | str] | str = (),
        forwarded_header: str = "x-forwarded-for",
        charge_default: bool = False,
        registry: CollectorRegistry | None = None,
        namespace: str = "",
        storage_options: Mapping[str, Any] | None = None,
        retry_budget: float = 0.05,
        log_interval: float = 10.0,
    ) -> None:
        self.app = app
        self._headers = option("headers", "rate_limit_headers", headers)
        self.fail_open: bool = option("fail_open", "rate_limit_fail_open", fail_open)
        self._budget = retry_budget

        # Rules: the default, route patterns, the per-IP limit beside a header key.
        interval = log_interval
        default_spec = option("default", "rate_limit", default)
        self._default = (
            Rule("*", parse_limits(default_spec, "default"), interval) if default_spec else None
        )
        named = rules_from(option("limits", "rate_limits", limits or {}), interval)
        self.rules: list[Rule] = [self._default] if self._default else []
        for _, rule in named:
            if charge_default and self._default is not None:
                rule.chain = (rule, self._default)
            self.rules.append(rule)
        self._routes = RouteTable(named)
        exempt_paths = option("exempt", "rate_limit_exempt", exempt)
        self._exempt = RouteTable((path, True) for path in exempt_paths)
        ip_spec = option("ip_limit", "rate_limit_ip", ip_limit)
        self._ip_rule = Rule("ip", parse_limits(ip_spec, "ip_limit"), interval) if ip_spec else None
        if self._ip_rule is not None:
            self.rules.append(self._ip_rule)

        # Storage and strategy.
        max_keys = option("max_keys", "rate_limit_max_keys", max_keys)
        if isinstance(storage, str):
            uri = option("storage", "rate_limit_storage", storage)
            extra = {"max_keys": max_keys} if uri.startswith("memory://") else {}
            storage = storage_for(uri, **extra, **(storage_options or {}))
        self.storage = storage
        self.strategy = option("strategy", "rate_limit_strategy", strategy)
        secret = option("key_secret", "rate_limit_key_secret", key_secret)
        self._memory: MemoryStore | None = None
        self._limiter: Limiter | None = None
        if isinstance(storage, MemoryStore):
            self._memory = storage
            self._memory_hit: Callable[..., tuple[bool, int, float]] = getattr(
                storage, self.strategy.replace("-", "_")
            )
            for rule in self.rules:
                rule.plan = self._plan(rule.chain)
        else:
            self._limiter = Limiter(storage, self.strategy, retry_budget)
        self.keys = ClientKeys(
            key=option("key", "rate_limit_key", key),
            allow=option("allow", "rate_limit_allow", allow),
            secret=secret,
            shared=self._memory is None,
            ipv6_prefix=option("ipv6_prefix", "rate_limit_ipv6_prefix", ipv6_prefix),
            trusted_proxies=option("trusted_proxies", "trusted_proxies", trusted_proxies),
            forwarded_header=option("forwarded_header", "forwarded_header", forwarded_header),
        )
        # The common case (client IP key, no allow list, no route limits) skips the lookups.
        self._ip_key = self.keys.ip_only
        self._default_only = not self._routes

        # Metrics: label children bound once per rule (route = the rule's pattern, bounded).
        self.registry = registry if registry is not None else CollectorRegistry()
        ns = option("namespace", "metrics_namespace", namespace)
        self._rejections = shared_counter(
            "ratelimit_rejections_total",
            "Requests rejected with 429 by the rate limiter, by route pattern.",
            ["route"],
            registry=self.registry,
            namespace=ns,
        )
        self._storage_errors = shared_counter(
            "ratelimit_storage_errors_total",
            "Rate-limit decisions that failed because the storage was unavailable.",
            registry=self.registry,
            namespace=ns,
        )
        if self._memory is not None:
            evictions = shared_counter(
                "ratelimit_evictions_total",
                "Client keys memory:// dropped before their window ended, to stay under "
                "its key cap (BUTTRESS_RATE_LIMIT_MAX_KEYS).",
                registry=self.registry,
                namespace=ns,
            )
            self._memory.on_evict = evictions.inc
        for rule in self.rules:
            rule.rejections = self._rejections.labels(rule.name)
        self._outage_throttle = LogThrottle(log_interval)
        self._check_throttle = LogThrottle(log_interval)

    async def aclose(self) -> None:
        """Close the remote storage's connections (call it on lifespan shutdown)."""
        await close_storage(self.storage)

    def _plan(self, chain: Iterable[Rule]) -> Plan:
        """Every limit of ``chain`` with its counters in the memory store."""
        assert self._memory is not None
        plan = []
        for rule in chain:
            for limit in rule.limits:
                table, tid = self._memory.table(self.strategy, rule.name, limit.n, limit.expiry)
                plan.append((rule, limit, table, tid))
        return tuple(plan)

    async def key_for(self, scope: Scope) -> str | None:
        """The client key of a request, or None when the client is on the allow list."""
        key: str | None = await self.keys.key_for(scope)
        return key

    # -- deciding --------------------------------------------------------------------

    async def decide(
        self, plan: Iterable[tuple[Rule, Limit]], key: str, *, want_stats: bool
    ) -> tuple[Rule | None, Limit | None, int, int]:
        """Charge ``key`` to every ``(rule, limit)``; bounded by the retry budget.

        Returns ``(rule, limit, remaining, reset_seconds)``: the rule and limit that
        rejected (remaining 0), or ``(None, tightest_limit, remaining, reset)`` when allowed
        (stats only when ``want_stats``). Raises ``StorageDown`` past the budget.
        """
        items = tuple(plan)
        if self._memory is not None:
            memory_plan = tuple(
                (rule, limit, *self._memory.table(self.strategy, rule.name, limit.n, limit.expiry))
                for rule, limit in items
            )
            return self.decide_memory(memory_plan, key, want_stats)
        try:
            return await asyncio.wait_for(self._decide_remote(items, key, want_stats), self._budget)
        except asyncio.TimeoutError:
            raise StorageDown(f"no answer within {self._budget * 1000:g} ms") from None

    def decide_memory(
        self, plan: Plan, key: str, want_stats: bool
    ) -> tuple[Rule | None, Limit | None, int, int]:
        now = time.time()
        hit = self._memory_hit
        best: Limit | None = None
        best_remaining, best_reset = 1 << 62, 0.0
        for rule, limit, table, tid in plan:
            allowed, remaining, reset = hit(table, tid, key, limit.n, limit.expiry, now)
            if not allowed:
                return rule, limit, 0, max(1, math.ceil(reset - now))
            if remaining < best_remaining:
                best, best_remaining, best_reset = limit, remaining, reset
        if not want_stats or best is None:
            return None, None, 0, 0
        return None, best, best_remaining, max(0, math.ceil(best_reset - now))

    async def _decide_remote(
        self, items: tuple[tuple[Rule, Limit], ...], key: str, want_stats: bool
    ) -> tuple[Rule | None, Limit | None, int, int]:
        limiter = self._limiter
        assert limiter is not None
        for rule, limit in items:
            if not await limiter.call("hit", limit.item, rule.name, key):
                stats = await limiter.call("get_window_stats", limit.item, rule.name, key)
                return rule, limit, 0, max(1, math.ceil(float(stats.reset_time) - time.time()))
        if not want_stats:
            return None, None, 0, 0
        best: tuple[Limit | None, int, float] = (None, 1 << 62, 0.0)
        for rule, limit in items:
            stats = await limiter.call("get_window_stats", limit.item, rule.name, key)
            if int(stats.remaining) < best[1]:
                best = (limit, int(stats.remaining), float(stats.reset_time))
        return None, best[0], best[1], max(0, math.ceil(best[2] - time.time()))

    async def check(
        self, scope: Scope, limits: tuple[Limit, ...], name: str, *, route: str | None = None
    ) -> Rejection | None:
        """Charge the request in ``scope`` to ``limits``, stored under ``name``.

        Rejections are counted and logged under ``route`` (default ``name``), a template.
        For limits decided inside the app (``buttress.fastapi.rate_limit``): the same key,
        allow list, storage, strategy, counters, logs and outage policy as the middleware.
        Returns None when the request may go on, else the ``Rejection`` to answer with.
        """
        key = await self.keys.key_for(scope)
        if key is None:
            return None
        rule = Rule(name, limits, 0.0)
        try:
            rejected, limit, _, reset = await self.decide(
                [(rule, item) for item in limits], key, want_stats=False
            )
        except StorageDown as exc:
            self.record_outage(exc)
            if self.fail_open:
                return None
            return Rejection(503, "Rate limiter unavailable", {})
        if rejected is None or limit is None:
            return None
        label = route or name
        self._record_rejection(
            label, limit, key, self._rejections.labels(label), self._check_throttle
        )
        seconds = str(reset)
        return Rejection(
            429,
            limit.detail,
            {
                "Retry-After": seconds,
                "RateLimit-Limit": str(limit.n),
                "RateLimit-Remaining": "0",
                "RateLimit-Reset": seconds,
            },
        )

    @staticmethod
    def _record_rejection(
        route: str, limit: Limit, key: str, counter: Any, throttle: LogThrottle
    ) -> None:
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

    def record_outage(self, error: BaseException) -> None:
        """Count a storage failure and warn at most once per interval."""
        self._storage_errors.inc()
        suppressed = self._outage_throttle.allow()
        if suppressed is not None:
            _log.warning(
                "rate_limit_storage_unavailable",
                error=str(error),
                fail_open=self.fail_open,
                suppressed=suppressed,
            )

    # -- ASGI ------------------------------------------------------------------------

    def _rule_for(self, scope: Scope) -> Rule | None:
        method: str = scope["method"]
        if self._exempt and self._exempt.match(method, scope):
            return None
        if self._default_only:
            return self._default
        rule: Rule | None = self._routes.match(method, scope)
        return rule if rule is not None else self._default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope[RATELIMIT_KEY] = self
        rule = self._rule_for(scope)
        head = scope["method"] == "HEAD"
        if self._ip_rule is not None:
            ip = self.keys.ip(scope)
            if await self._enforce(self._ip_rule, ip, scope, send, head, stats=False) is None:
                return
        if rule is None:
            await self.app(scope, receive, send)
            return
        if self._ip_key:
            key: str | None = self.keys.ip(scope)
        else:
            key = await self.keys.key_for(scope)
        if key is None:
            await self.app(scope, receive, send)
            return
        extra = await self._enforce(rule, key, scope, send, head, stats=self._headers)
        if extra is None:
            return
        if not extra:
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*(message.get("headers") or ()), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def _enforce(
        self, rule: Rule, key: str, scope: Scope, send: Send, head: bool, *, stats: bool
    ) -> Headers | None:
        """Charge ``key`` to ``rule``: None when answered here (429/503), else headers to add."""
        if self._memory is not None:
            rejected, limit, remaining, reset = self.decide_memory(rule.plan, key, stats)
        else:
            try:
                rejected, limit, remaining, reset = await self.decide(
                    [(owner, item) for owner in rule.chain for item in owner.limits],
                    key,
                    want_stats=stats,
                )
            except StorageDown as exc:
                self.record_outage(exc)
                if self.fail_open:
                    return []
                await _send_body(send, 503, _UNAVAILABLE_BODY, [], head)
                return None
        if rejected is not None and limit is not None:
            self._record_rejection(
                rejected.name, limit, key, rejected.rejections, rejected.throttle
            )
            if rejected.name not in ("*", "ip"):
                # The app never ran, so no framework named the route: the limit's own
                # pattern is the template the metrics and the access log should show.
                scope.setdefault(ROUTE_KEY, rejected.template)
            seconds = _ascii(reset)
            extra = [
                (b"retry-after", seconds),
                (b"ratelimit-limit", limit.amount),
                (b"ratelimit-remaining", b"0"),
                (b"ratelimit-reset", seconds),
            ]
            await _send_body(send, 429, limit.body, extra, head)
            return None
        if limit is None:
            return []
        return [
            (b"ratelimit-limit", limit.amount),
            (b"ratelimit-remaining", _ascii(remaining)),
            (b"ratelimit-reset", _ascii(reset)),
        ]


#: The header values 0..4095 as bytes, built on first use (most counts and resets fit).
_NUMBERS: list[bytes] = []


def _ascii(number: int) -> bytes:
    if not _NUMBERS:
        _NUMBERS.extend(str(n).encode("ascii") for n in range(4096))
    return _NUMBERS[number] if 0 <= number < 4096 else str(number).encode("ascii")


async def _send_body(send: Send, status: int, body: bytes, extra: Headers, head: bool) -> None:
    headers: Headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode("ascii")),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})
