"""Rate limiting on ``limits``: per-route limits, one limit across instances, a 429 that keeps the contract.

The decision is made before the app runs, so the middleware matches its own route
patterns (``METHOD /path/{name}``, ``/files/{name:path}``) against every spelling of the
path some framework routes to the same handler (see ``ratelimit_rules``), and works the
same under every framework. A request is charged to the limits of the first pattern it
matches, else to the default limit; a route with its own limit is *not* also charged the
default unless ``charge_default=True``. With a header key, ``ip_limit`` charges the
client IP too, so inventing keys does not escape limiting.

Per route, a limit may be shared by a group of routes (one budget), cost more than one
hit, count only failures (login throttling) or successes, or depend on the client key
(a callable: paid users get more). Rejections and outages are logged through
``LogThrottle``: an attack never turns into one log line per request. Storages and
outages: see ``ratelimit_storage``; the counting itself: ``ratelimit_decide``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Final

import structlog
from prometheus_client import CollectorRegistry

from buttress._asgi import ASGIApp, Headers, Message, Receive, Scope, Send
from buttress._registry import shared_counter
from buttress._request import RATELIMIT_KEY, RECORD_KEY, ROUTE_KEY, RequestRecord
from buttress.config import IPNetwork, option
from buttress.logs import LogThrottle
from buttress.ratelimit_answer import (
    ascii_number,
    check_shared,
    log_rejection,
    rate_headers,
    send_body,
)
from buttress.ratelimit_decide import Decider
from buttress.ratelimit_rules import ClientKeys, Limit, RouteTable, Rule, parse_limits, rules_from
from buttress.ratelimit_storage import (
    StorageDown,
    close_storage,
    storage_for,
    warn_if_memory_with_workers,
)

__all__ = ["RateLimitMiddleware", "Rejection", "warn_if_memory_with_workers"]

KeyFunc = Callable[[Scope], "str | Awaitable[str | None] | None"]
LimitSpec = str | Callable[[str], str]

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

    ``websocket`` and ``lifespan`` scopes pass through unlimited. Exempt paths, requests
    for which ``exempt_when(scope)`` is true and allowed clients pass through without
    touching the storage. ``default`` (and a route's limit) may be a callable of the
    client key returning a limit string; its answers are cached per key.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        limits: Mapping[str, Any] | str | None = None,
        default: LimitSpec = "",
        key: str | KeyFunc = "ip",
        ip_limit: str = "",
        key_secret: str | None = None,
        ipv6_prefix: int = 64,
        max_keys: int = 200_000,
        storage: Any = "memory://",
        strategy: str = "sliding-window-counter",
        headers: bool = True,
        header_style: str = "ietf",
        fail_open: bool = True,
        exempt: Iterable[str] | str = ("/metrics",),
        exempt_when: Callable[[Scope], bool] | None = None,
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
        self._style = option("header_style", "rate_limit_header_style", header_style)
        self.fail_open: bool = option("fail_open", "rate_limit_fail_open", fail_open)
        self._exempt_when = exempt_when

        # Rules: the default, route patterns, the per-IP limit beside a header key.
        interval = log_interval
        self._default: Rule | None = None
        if callable(default):
            self._default = Rule("*", (), interval, dynamic=default)
        elif option("default", "rate_limit", default):
            self._default = Rule("*", parse_limits(default, "default"), interval)
        named = rules_from(option("limits", "rate_limits", limits or {}), interval)
        self.rules: list[Rule] = [self._default] if self._default else []
        for _, rule in named:
            if charge_default and self._default is not None and not self._default.dynamic:
                rule.chain = (rule, self._default)
            self.rules.append(rule)
        check_shared(self.rules)
        self._routes = RouteTable(named)
        exempt_paths = option("exempt", "rate_limit_exempt", exempt)
        self._exempt: RouteTable | None = RouteTable((path, True) for path in exempt_paths) or None
        ip_spec = option("ip_limit", "rate_limit_ip", ip_limit)
        self._ip_rule = Rule("ip", parse_limits(ip_spec, "ip_limit"), interval) if ip_spec else None
        if self._ip_rule is not None:
            self.rules.append(self._ip_rule)

        # Storage, strategy and keys.
        max_keys = option("max_keys", "rate_limit_max_keys", max_keys)
        if isinstance(storage, str):
            uri = option("storage", "rate_limit_storage", storage)
            extra = {"max_keys": max_keys} if uri.startswith("memory://") else {}
            storage = storage_for(uri, **extra, **(storage_options or {}))
        self.storage = storage
        self.strategy = option("strategy", "rate_limit_strategy", strategy)
        self.decider = Decider(storage, self.strategy, retry_budget)
        self._memory = self.decider.memory
        for rule in self.rules:
            self._prepare(rule)
        self.keys = ClientKeys(
            key=option("key", "rate_limit_key", key),
            allow=option("allow", "rate_limit_allow", allow),
            secret=option("key_secret", "rate_limit_key_secret", key_secret),
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
        counter = shared_counter(
            "ratelimit_rejections_total",
            "Requests rejected with 429 by the rate limiter, by route pattern.",
            ["route"],
            registry=self.registry,
            namespace=ns,
        )
        self._rejections = counter
        for rule in self.rules:
            rule.rejections = counter.labels(rule.label)
        self._storage_errors = shared_counter(
            "ratelimit_storage_errors_total",
            "Rate-limit decisions that failed because the storage was unavailable.",
            registry=self.registry,
            namespace=ns,
        )
        if self._memory is not None:
            self._memory.on_evict = shared_counter(
                "ratelimit_evictions_total",
                "Client keys memory:// dropped before their window ended, to stay under "
                "its key cap (BUTTRESS_RATE_LIMIT_MAX_KEYS).",
                registry=self.registry,
                namespace=ns,
            ).inc
        self._outage_throttle = LogThrottle(log_interval)
        self._check_throttle = LogThrottle(log_interval)

    def _prepare(self, rule: Rule) -> None:
        if self._memory is not None:
            rule.plan = self.decider.plan(
                (owner, limit) for owner in rule.chain for limit in owner.limits
            )

    def _warming(self, receive: Receive) -> Receive:
        """``receive`` of the lifespan: on start-up, connect to the storage first.

        A Redis Cluster client learns its slots on first use, which takes longer than one
        decision's budget: without this, the first requests of a cold instance fail open.
        """

        async def warm_then_receive() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup" and not await self.decider.warm():
                _log.warning(
                    "rate_limit_storage_unavailable_at_startup",
                    fail_open=self.fail_open,
                )
            return message

        return warm_then_receive

    async def aclose(self) -> None:
        """Close the remote storage's connections (call it on lifespan shutdown)."""
        await close_storage(self.storage)

    async def key_for(self, scope: Scope) -> str | None:
        """The client key of a request, or None when the client is on the allow list."""
        key: str | None = await self.keys.key_for(scope)
        return key

    async def check(
        self, scope: Scope, limits: tuple[Limit, ...], name: str, *, route: str | None = None
    ) -> Rejection | None:
        """Charge the request in ``scope`` to ``limits``, stored under ``name``.

        For limits decided inside the app (``buttress.fastapi.rate_limit``): the same key,
        allow list, storage, strategy, counters, logs and outage policy as the middleware.
        Rejections are counted and logged under ``route`` (default ``name``), a template.
        Returns None when the request may go on, else the ``Rejection`` to answer with.
        """
        key = await self.keys.key_for(scope)
        if key is None:
            return None
        rule = Rule(name, limits, 0.0)
        try:
            rejected, limit, _, reset = await self.decider.decide(
                [(rule, item) for item in limits], key, want_stats=False
            )
        except StorageDown as exc:
            self.record_outage(exc)
            return None if self.fail_open else Rejection(503, "Rate limiter unavailable", {})
        if rejected is None or limit is None:
            return None
        label = route or name
        log_rejection(label, limit, key, self._rejections.labels(label), self._check_throttle)
        seconds = str(reset)
        headers = {
            name.decode(): value.decode()
            for name, value in rate_headers(self._style, limit, 0, reset)
        }
        return Rejection(429, limit.detail, {"Retry-After": seconds, **headers})

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

    def _rule_for(self, scope: Scope) -> Rule | bool | None:
        """The rule a request is charged to; None for none, False when it is exempt."""
        method: str = scope["method"]
        if self._exempt is not None and self._exempt.match(method, scope):
            return False
        if self._exempt_when is not None and self._exempt_when(scope):
            return False
        if self._default_only:
            return self._default
        rule: Rule | None = self._routes.match(method, scope)
        return rule if rule is not None else self._default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan" and self._memory is None:
                receive = self._warming(receive)
            await self.app(scope, receive, send)
            return
        scope[RATELIMIT_KEY] = self
        rule = self._rule_for(scope)
        if rule is False:
            await self.app(scope, receive, send)
            return
        head = scope["method"] == "HEAD"
        if self._ip_rule is not None:
            ip = self.keys.ip(scope)
            if await self._enforce(self._ip_rule, ip, scope, send, head, stats=False) is None:
                return
        if rule is None or rule is True:
            await self.app(scope, receive, send)
            return
        if self._ip_key:
            # ``ClientKeys.ip`` inlined: this is the per-request path of the default setup.
            record: RequestRecord | None = scope.get(RECORD_KEY)
            if record is not None and record.client_ip is not None and ":" not in record.client_ip:
                key: str | None = record.client_ip
            else:
                key = self.keys.ip(scope)
        else:
            key = await self.keys.key_for(scope)
        if key is None:
            await self.app(scope, receive, send)
            return
        if rule.dynamic is not None:
            rule = rule.for_key(key, self._prepare)
        if rule.count != "all":
            await self._counted_after(rule, key, scope, receive, send, head)
            return
        if self._memory is not None:
            # ``_enforce`` without a coroutine: the memory store answers synchronously.
            rejected, limit, remaining, reset = self.decider.decide_memory(
                rule.plan, key, self._headers, rule.cost
            )
            if rejected is not None and limit is not None:
                await self._reject(rejected, limit, key, reset, scope, send, head)
                return
            extra = rate_headers(self._style, limit, remaining, reset) if limit is not None else []
        else:
            answered = await self._enforce(rule, key, scope, send, head, stats=self._headers)
            if answered is None:
                return
            extra = answered
        if not extra:
            await self.app(scope, receive, send)
            return
        record = scope.get(RECORD_KEY)
        if record is not None:
            # The context layer's responder appends them when the response starts (on the
            # contract's own 500 too): one send wrapper less on every limited request.
            record.extra_headers = extra
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
        try:
            if self._memory is not None:
                outcome = self.decider.decide_memory(rule.plan, key, stats, rule.cost)
            else:
                pairs = [(owner, item) for owner in rule.chain for item in owner.limits]
                outcome = await self.decider.decide(pairs, key, want_stats=stats, cost=rule.cost)
        except StorageDown as exc:
            return await self._outage(exc, send, head)
        rejected, limit, remaining, reset = outcome
        if rejected is not None and limit is not None:
            await self._reject(rejected, limit, key, reset, scope, send, head)
            return None
        if limit is None:
            return []
        return rate_headers(self._style, limit, remaining, reset)

    async def _counted_after(
        self, rule: Rule, key: str, scope: Scope, receive: Receive, send: Send, head: bool
    ) -> None:
        """``count="failures"``/``"successes"``: refuse once spent, charge after the response."""
        pairs = [(owner, item) for owner in rule.chain for item in owner.limits]
        try:
            refused = await self.decider.peek(pairs, key, rule.cost)
        except StorageDown as exc:
            if await self._outage(exc, send, head) is None:
                return
            refused = None
        if refused is not None:
            await self._reject(refused[0], refused[1], key, refused[2], scope, send, head)
            return
        status = 0

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            failed = status >= 400 or status == 0
            if failed == (rule.count == "failures"):
                try:
                    await self.decider.decide(pairs, key, want_stats=False, cost=rule.cost)
                except StorageDown as exc:
                    self.record_outage(exc)

    async def _outage(self, error: StorageDown, send: Send, head: bool) -> Headers | None:
        self.record_outage(error)
        if self.fail_open:
            return []
        await send_body(send, 503, _UNAVAILABLE_BODY, [], head)
        return None

    async def _reject(
        self, rule: Rule, limit: Limit, key: str, reset: int, scope: Scope, send: Send, head: bool
    ) -> None:
        log_rejection(rule.label, limit, key, rule.rejections, rule.throttle)
        if rule.label not in ("*", "ip"):
            # The app never ran, so no framework named the route: the limit's own
            # pattern is the template the metrics and the access log should show.
            scope.setdefault(ROUTE_KEY, rule.template)
        extra = [(b"retry-after", ascii_number(reset)), *rate_headers(self._style, limit, 0, reset)]
        await send_body(send, 429, limit.body, extra, head)
