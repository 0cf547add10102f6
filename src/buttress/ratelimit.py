"""Rate limiting on ``limits``: per-route limits, one limit across instances, a 429 that keeps the contract.

The decision is made before the app runs, so the middleware matches its own route
patterns (``METHOD /path/{name}`` or ``/path/{name}``) and works the same under every
framework. A request is charged to the limits of the first route pattern it matches,
else to the default limit; a route with its own limit is *not* also charged the
default unless ``charge_default=True``.

# Strategy: storages. Remote storages (Redis in every flavour, memcached) go through
# ``limits.aio`` so no storage call blocks the event loop. ``memory://`` uses limits'
# *synchronous* MemoryStorage and strategies: they are plain dict operations with no I/O,
# so they cannot block the loop, and they are several times cheaper than the asyncio
# memory storage, whose background expiry task respawns under a busy loop (see
# ``/work/shared/PERF-NOTES.md`` and the README).

# Strategy: outages. A storage error is retried with tenacity inside a small budget
# (about 50 ms); then the request passes (fail-open, the default) or gets a 503
# (fail-closed). The redis client reconnects by itself, so limiting resumes when the
# storage is back. Warnings about rejections and outages go through ``LogThrottle``: an
# attack never turns into one log line per request.
"""

from __future__ import annotations

import hashlib
import inspect
import ipaddress
import math
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from heapq import heappop, heappush
from math import floor
from typing import TYPE_CHECKING, Any, Final, cast

import structlog

from buttress._asgi import INFO_KEY, ASGIApp, Headers, Message, Receive, RequestInfo, Scope, Send
from buttress.adapters import ROUTE_KEY
from buttress.config import IPNetwork, Settings
from buttress.context import client_ip

if TYPE_CHECKING:
    from limits import RateLimitItem
    from prometheus_client import CollectorRegistry

__all__ = [
    "RateLimitMiddleware",
    "fastapi_dependency",
    "storage_for",
    "warn_if_memory_with_workers",
]

KeyFunc = Callable[[Scope], "str | Awaitable[str | None] | None"]

#: Where the middleware leaves itself for the FastAPI dependency to find.
SCOPE_KEY: Final = "buttress.ratelimit"

#: Schemes users write, mapped to limits' asyncio storage schemes.
_ASYNC_SCHEMES: Final = {
    "redis": "async+redis",
    "rediss": "async+rediss",
    "redis+unix": "async+redis+unix",
    "redis+sentinel": "async+redis+sentinel",
    "redis+cluster": "async+redis+cluster",
    "memcached": "async+memcached",
}
_REDIS_SCHEMES: Final = frozenset(s for s in _ASYNC_SCHEMES if s.startswith("redis"))
_UNAVAILABLE_BODY: Final = b'{"detail":"Rate limiter unavailable"}'
_SEGMENT = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::[^}]*)?\}")
_log = structlog.get_logger("buttress.ratelimit")


class _StorageDown(Exception):
    """The storage failed for longer than the retry budget."""


# --- precomputed limits -----------------------------------------------------------------


class _Limit:
    """One limit item with its 429 body and header bytes encoded once."""

    __slots__ = ("amount", "body", "detail", "expiry", "item", "length", "n")

    def __init__(self, item: RateLimitItem) -> None:
        import orjson

        self.item = item
        self.detail = f"Rate limit exceeded: {item}. Please slow down."
        self.body = orjson.dumps({"detail": self.detail})
        self.length = str(len(self.body)).encode("ascii")
        self.amount = str(item.amount).encode("ascii")
        self.n: int = item.amount
        self.expiry: int = item.get_expiry()


class _Rule:
    """The limits of one route pattern (or of the default), with its log throttle and counter."""

    __slots__ = ("chain", "limits", "name", "plan", "rejections", "throttle")

    def __init__(self, name: str, spec: str, throttle_interval: float) -> None:
        from limits import parse_many

        from buttress.logs import LogThrottle

        try:
            items = parse_many(spec)
        except ValueError:
            raise ValueError(
                f"{spec!r} (for {name!r}) is not a rate limit; "
                "write it like '100/minute' or '10/second;1000/hour'."
            ) from None
        self.name = name
        self.limits = tuple(_Limit(item) for item in items)
        self.throttle = LogThrottle(throttle_interval)
        self.chain: tuple[_Rule, ...] = (self,)
        self.rejections: Any = None
        #: ``memory://``: (rule, limit, counters, table id) for every limit of the chain.
        self.plan: tuple[tuple[_Rule, _Limit, dict[str, Any], int], ...] = ()


def _compile(pattern: str) -> re.Pattern[str] | None:
    """A regex for ``pattern`` when it has ``{name}`` segments, else None (an exact path)."""
    if "{" not in pattern:
        return None
    out, pos = [], 0
    for match in _SEGMENT.finditer(pattern):
        out.append(re.escape(pattern[pos : match.start()]))
        out.append("[^/]+")
        pos = match.end()
    out.append(re.escape(pattern[pos:]))
    return re.compile("".join(out))


# --- storage ----------------------------------------------------------------------------


def storage_for(uri: str, **options: Any) -> Any:
    """The limits storage for ``uri`` as users write it (``redis://``, ``memory://``, ...).

    ``memory://`` gives buttress' in-process ``MemoryStore``; every remote scheme gives its
    ``limits.aio`` storage (``redis://`` becomes ``async+redis://``), using the ``redis``
    package's asyncio client with its own retries off (buttress retries within a budget).
    """
    from limits.errors import ConfigurationError
    from limits.storage import storage_from_string

    scheme = uri.partition("://")[0]
    if scheme == "memory":
        return _memory_storage()
    if scheme.startswith("async+"):
        target = uri
        scheme = scheme.removeprefix("async+")
    elif scheme in _ASYNC_SCHEMES:
        target = _ASYNC_SCHEMES[scheme] + uri[len(scheme) :]
    else:
        raise ValueError(
            f"BUTTRESS_RATE_LIMIT_STORAGE={_redact(uri)!r} is not a supported storage; use "
            "memory://, redis://, rediss://, redis+sentinel://, redis+cluster:// or memcached://."
        )
    opts: dict[str, Any] = {"wrap_exceptions": True}
    if scheme in _REDIS_SCHEMES:
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        opts.update(
            implementation="redispy",
            socket_connect_timeout=0.5,
            socket_timeout=0.5,
            retry=Retry(NoBackoff(), 0),
        )
    opts.update(options)
    try:
        return storage_from_string(target, **opts)
    except ConfigurationError as exc:
        extra = "redis" if scheme in _REDIS_SCHEMES else "memcached"
        raise ValueError(
            f"BUTTRESS_RATE_LIMIT_STORAGE={_redact(uri)!r} cannot be used: {exc}. "
            f"Install the client, e.g. pip install 'buttress[{extra}]' "
            "(memcached needs 'memcachio')."
        ) from None


def _memory_storage() -> MemoryStore:
    return MemoryStore()


class MemoryStore:
    """Counters for ``memory://``: limits' three strategies as a few dict and list operations.

    # Strategy: limits' MemoryStorage and strategies cost about 20 µs per allowed request
    # (hit, then window stats, each building string keys and taking a lock); here one call
    # answers allowed, remaining and reset with limits' exact arithmetic. Counters live in
    # one dict per (strategy, rule, limit), keyed by the client key itself: no key string is
    # built per request. Memory stays bounded without a thread or a timer: every key gets one
    # entry in a heap of (deadline, table, key) when it is created, and every hit drops at
    # most a few keys whose deadline has passed (a key still in use is pushed back with its
    # new deadline).

    Per key: fixed-window ``[reset_at, count]``; sliding-window-counter
    ``[window_index, previous_count, current_count]``; moving-window the acquisition times
    of the last ``amount`` entries, oldest first (a list, or a deque for large amounts).
    """

    __slots__ = ("_heap", "_ids", "_tables")

    #: Expired keys dropped per hit at most (bounds the work any one request does).
    SWEEP = 4

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, str]] = []
        self._tables: list[tuple[dict[str, Any], str, int]] = []
        self._ids: dict[tuple[str, str, int, int], int] = {}

    def table(self, mode: str, name: str, amount: int, expiry: int) -> tuple[dict[str, Any], int]:
        """The counters of one limit of one rule (created on first use) and their table id."""
        ident = (mode, name, amount, expiry)
        tid = self._ids.get(ident)
        if tid is None:
            tid = self._ids[ident] = len(self._tables)
            self._tables.append(({}, mode, expiry))
        return self._tables[tid][0], tid

    def __len__(self) -> int:
        """How many keys are stored, over every table."""
        return sum(len(table) for table, _, _ in self._tables)

    def reset(self) -> None:
        """Forget every counter."""
        self._heap.clear()
        for table, _, _ in self._tables:
            table.clear()

    def sweep(self, now: float) -> None:
        """Drop up to ``SWEEP`` keys whose window has passed; push live ones back."""
        heap = self._heap
        tables = self._tables
        budget = self.SWEEP
        while budget and heap and heap[0][0] <= now:
            budget -= 1
            _, tid, key = heappop(heap)
            table, mode, expiry = tables[tid]
            state = table.get(key)
            if state is None:
                continue
            if mode == "fixed-window":
                deadline = state[0]
                if deadline <= now:
                    del table[key]
                    continue
            elif mode == "sliding-window-counter":
                if int(now / expiry) >= state[0] + 2:
                    del table[key]
                    continue
                deadline = (state[0] + 2) * expiry
            else:
                if not state or state[-1] < now - expiry:
                    del table[key]
                    continue
                deadline = state[-1] + expiry
            heappush(heap, (deadline, tid, key))

    # Each strategy: ``(allowed, remaining, reset_at)`` for one hit of ``key`` at ``now``,
    # with limits' arithmetic (``limits.strategies`` over ``limits.storage.MemoryStorage``).

    def fixed_window(
        self, table: dict[str, Any], tid: int, key: str, amount: int, expiry: int, now: float
    ) -> tuple[bool, int, float]:
        """A counter that restarts ``expiry`` seconds after the first hit of its window."""
        heap = self._heap
        if heap and heap[0][0] <= now:
            self.sweep(now)
        state = table.get(key)
        if state is None:
            reset = now + expiry
            table[key] = [reset, 1]
            heappush(heap, (reset, tid, key))
            count = 1
        elif state[0] <= now:
            reset = state[0] = now + expiry
            count = state[1] = 1
        else:
            reset = state[0]
            count = state[1] = state[1] + 1  # limits counts rejected hits too
        return count <= amount, amount - count if count < amount else 0, reset

    def sliding_window_counter(
        self, table: dict[str, Any], tid: int, key: str, amount: int, expiry: int, now: float
    ) -> tuple[bool, int, float]:
        """The current window's count plus the previous one's, weighted by its overlap."""
        heap = self._heap
        if heap and heap[0][0] <= now:
            self.sweep(now)
        # ``x % 1`` of a positive float is exactly ``x - int(x)``: limits' formulas below,
        # without three slow ``fmod`` calls.
        scaled = now / expiry
        window = int(scaled)
        state = table.get(key)
        if state is None:
            state = table[key] = [window, 0, 0]
            heappush(heap, ((window + 2) * expiry, tid, key))
        elif state[0] != window:
            state[1] = state[2] if state[0] == window - 1 else 0
            state[2] = 0
            state[0] = window
        previous, current = state[1], state[2]
        if not previous:
            allowed = current < amount
            if allowed:
                current = state[2] = current + 1
            elif not current:
                return False, 0, now
            remaining = amount - current if current < amount else 0
            reset_in = ((1 - (scaled - window)) * expiry + expiry) % expiry
            return allowed, remaining, now + reset_in
        scaled = (now - expiry) / expiry
        previous_ttl = (1 - (scaled - int(scaled))) * expiry
        weight = previous * previous_ttl / expiry
        allowed = floor(weight + current) < amount
        if allowed:
            current = state[2] = current + 1
        remaining = amount - floor(weight + current)
        reset_in = previous_ttl % (expiry / previous)
        if current:
            scaled = now / expiry
            current_in = ((1 - (scaled - window)) * expiry + expiry) % expiry
            if current_in < reset_in:
                reset_in = current_in
        return allowed, remaining if remaining > 0 else 0, now + reset_in

    def moving_window(
        self, table: dict[str, Any], tid: int, key: str, amount: int, expiry: int, now: float
    ) -> tuple[bool, int, float]:
        """At most ``amount`` acquisitions in any ``expiry`` seconds."""
        heap = self._heap
        if heap and heap[0][0] <= now:
            self.sweep(now)
        cutoff = now - expiry
        times = table.get(key)
        if times is None:
            times = table[key] = [] if amount <= 256 else deque()
            heappush(heap, (now + expiry, tid, key))
        while times and times[0] < cutoff:  # out of every future window
            del times[0]
        allowed = len(times) < amount  # else the amount-th newest is still in the window
        if allowed:
            times.append(now)
        count, first = len(times), 0
        while first < count and times[first] <= cutoff:
            first += 1
        if first == count:
            return allowed, amount, now
        return allowed, amount - (count - first), times[first] + expiry


def _redact(uri: str) -> str:
    scheme, sep, rest = uri.partition("://")
    if "@" in rest.partition("/")[0]:
        return f"{scheme}{sep}***@{rest.partition('@')[2]}"
    return uri


_STRATEGIES: Final = ("fixed-window", "moving-window", "sliding-window-counter")


def _check_strategy(strategy: str) -> None:
    if strategy not in _STRATEGIES:
        raise ValueError(
            f"BUTTRESS_RATE_LIMIT_STRATEGY={strategy!r} is not a strategy; use "
            "'fixed-window', 'moving-window' or 'sliding-window-counter'."
        )


def _is_sync(storage: Any) -> bool:
    from limits.storage import Storage

    return isinstance(storage, Storage)


class _Limiter:
    """One strategy over one storage: sync for in-process memory, ``limits.aio`` otherwise."""

    def __init__(self, storage: Any, strategy: str, retry_budget: float) -> None:
        _check_strategy(strategy)
        self.storage = storage
        self.sync: Any = None
        self.aio: Any = None
        try:
            if _is_sync(storage):
                from limits.strategies import STRATEGIES

                self.sync = STRATEGIES[strategy](storage)
            else:
                from limits.aio.strategies import STRATEGIES as AIO_STRATEGIES

                self.aio = AIO_STRATEGIES[strategy](storage)  # type: ignore[abstract]
        except NotImplementedError:
            raise ValueError(
                f"BUTTRESS_RATE_LIMIT_STRATEGY={strategy!r} is not supported by the "
                f"{type(storage).__name__} storage; use 'fixed-window' or "
                "'sliding-window-counter'."
            ) from None
        self._budget = retry_budget
        from limits.errors import StorageError

        self._errors: tuple[type[BaseException], ...] = (StorageError, OSError, TimeoutError)

    async def call(self, method: str, item: RateLimitItem, *ids: str) -> Any:
        """Call an async strategy method, retrying storage errors within the budget."""
        func = getattr(self.aio, method)
        try:
            return await func(item, *ids)
        except self._errors:
            pass
        from tenacity import (
            AsyncRetrying,
            RetryError,
            retry_if_exception_type,
            stop_after_delay,
            wait_exponential,
        )

        retrying = AsyncRetrying(
            stop=stop_after_delay(self._budget),
            wait=wait_exponential(multiplier=0.005, max=0.02),
            retry=retry_if_exception_type(self._errors),
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await func(item, *ids)
        except RetryError as exc:
            raise _StorageDown(str(exc.last_attempt.exception())) from None
        raise _StorageDown("no attempt was made")  # pragma: no cover


# --- the middleware ---------------------------------------------------------------------


class RateLimitMiddleware:
    """Answers 429 (JSON detail, ``Retry-After``, ``RateLimit-*``) once a client exceeds a limit.

    ``websocket`` and ``lifespan`` scopes pass through unlimited. Exempt paths and allowed
    clients pass through without touching the storage.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: Settings | None = None,
        limits: Mapping[str, str] | None = None,
        default: str | None = None,
        key: str | KeyFunc | None = None,
        storage: Any = None,
        strategy: str | None = None,
        headers: bool | None = None,
        fail_open: bool | None = None,
        exempt: Iterable[str] | None = None,
        allow: Iterable[str] | None = None,
        trusted_proxies: Sequence[IPNetwork] | None = None,
        charge_default: bool = False,
        registry: CollectorRegistry | None = None,
        storage_options: Mapping[str, Any] | None = None,
        retry_budget: float = 0.05,
        log_interval: float = 10.0,
    ) -> None:
        s = settings or Settings.from_env()
        self.app = app
        self.settings = s
        self._trusted = tuple(s.trusted_proxies if trusted_proxies is None else trusted_proxies)
        self._headers = s.rate_limit_headers if headers is None else headers
        self.fail_open = s.rate_limit_fail_open if fail_open is None else fail_open
        self._exempt = frozenset(s.rate_limit_exempt if exempt is None else exempt)
        self._log_interval = log_interval

        # Routes: exact paths in a dict, patterns in declaration order.
        default_spec = s.rate_limit if default is None else default
        self._default: _Rule | None = None
        if default_spec:
            self._default = _Rule("*", default_spec, log_interval)
        self._exact: dict[str, dict[str | None, _Rule]] = {}
        self._patterns: list[tuple[re.Pattern[str], str | None, _Rule]] = []
        self.rules: list[_Rule] = [self._default] if self._default else []
        for spec_key, spec in (s.rate_limits if limits is None else limits).items():
            method, _, pattern = spec_key.strip().rpartition(" ")
            method = method.strip().upper() or None  # type: ignore[assignment]
            if not pattern.startswith("/"):
                raise ValueError(
                    f"{spec_key!r} is not 'METHOD /path' or '/path'; write route limits like "
                    """{"POST /auth/login": "10/minute", "/reports/{report_id}": "30/minute"}."""
                )
            rule = _Rule(spec_key.strip(), spec, log_interval)
            if charge_default and self._default is not None:
                rule.chain = (rule, self._default)
            self.rules.append(rule)
            regex = _compile(pattern)
            if regex is None:
                self._exact.setdefault(pattern, {})[method] = rule
            else:
                self._patterns.append((regex, method, rule))

        # Keys and the allow list.
        self._key_func: KeyFunc | None = None
        self._key_header: bytes | None = None
        self._key_async = False
        key = s.rate_limit_key if key is None else key
        if isinstance(key, str):
            if key.startswith("header:"):
                self._key_header = key[7:].strip().lower().encode("latin-1")
            elif key != "ip":
                raise ValueError(
                    f"BUTTRESS_RATE_LIMIT_KEY={key!r} is not a key; use 'ip', "
                    "'header:<Name>' such as 'header:X-API-Key', or a callable of the scope."
                )
        else:
            self._key_func = key
            call = getattr(key, "__call__", None)  # noqa: B004 (an async __call__ counts too)
            self._key_async = inspect.iscoroutinefunction(key) or inspect.iscoroutinefunction(call)
        nets: list[IPNetwork] = []
        literal: set[str] = set()
        for entry in s.rate_limit_allow if allow is None else allow:
            try:
                nets.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError:
                literal.add(entry.strip())
        self._allow_nets = tuple(nets)
        self._allow_keys = frozenset(literal)

        # Storage and strategy.
        if storage is None or isinstance(storage, str):
            storage = storage_for(storage or s.rate_limit_storage, **(storage_options or {}))
        self.storage = storage
        self.strategy = strategy or s.rate_limit_strategy
        self._memory: MemoryStore | None = None
        self._limiter: _Limiter | None = None
        self._sync: Any = None
        if isinstance(storage, MemoryStore):
            _check_strategy(self.strategy)
            self._memory = storage
            self._memory_hit: Callable[..., tuple[bool, int, float]] = getattr(
                storage, self.strategy.replace("-", "_")
            )
            for rule in self.rules:
                rule.plan = tuple(self._plan(rule.chain))  # type: ignore[arg-type]
        else:
            self._limiter = _Limiter(storage, self.strategy, retry_budget)
            self._sync = self._limiter.sync
        # The common case (client IP key, no allow list, no route limits) skips the lookups.
        self._ip_key = (
            self._key_header is None
            and self._key_func is None
            and not self._allow_nets
            and not self._allow_keys
        )
        self._default_only = not self._exact and not self._patterns

        # Metrics: label children bound once per rule (route = the rule's pattern, bounded).
        if registry is None:
            from prometheus_client import CollectorRegistry

            registry = CollectorRegistry(auto_describe=True)
        self.registry = registry
        from buttress.metrics import shared_counter

        namespace = s.metrics_namespace
        rejections = shared_counter(
            "ratelimit_rejections_total",
            "Requests rejected with 429 by the rate limiter, by route pattern.",
            ["route"],
            registry=registry,
            namespace=namespace,
        )
        self._storage_errors = shared_counter(
            "ratelimit_storage_errors_total",
            "Rate-limit decisions that failed because the storage was unavailable.",
            registry=registry,
            namespace=namespace,
        )
        for rule in self.rules:
            rule.rejections = rejections.labels(rule.name)
        self._rejections = rejections
        from buttress.logs import LogThrottle

        self._outage_throttle = LogThrottle(log_interval)

    async def aclose(self) -> None:
        """Close the remote storage's connections (call it on lifespan shutdown)."""
        client = getattr(getattr(self.storage, "bridge", None), "storage", None)
        close = getattr(client, "aclose", None)
        if close is not None:
            await close()

    def _plan(
        self, chain: Iterable[_Rule | _DepRule]
    ) -> list[tuple[_Rule | _DepRule, _Limit, dict[str, Any], int]]:
        """Every limit of ``chain`` with its counters in the memory store."""
        assert self._memory is not None
        plan = []
        for rule in chain:
            for limit in rule.limits:
                table, tid = self._memory.table(self.strategy, rule.name, limit.n, limit.expiry)
                plan.append((rule, limit, table, tid))
        return plan

    # -- matching --------------------------------------------------------------------

    def _match(self, method: str, path: str) -> _Rule | None:
        by_method = self._exact.get(path)
        if by_method is not None:
            rule = by_method.get(method) or by_method.get(None)
            if rule is not None:
                return rule
        for regex, rule_method, rule in self._patterns:
            if (rule_method is None or rule_method == method) and regex.fullmatch(path):
                return rule
        return self._default

    def _ip(self, scope: Scope) -> str:
        info: RequestInfo | None = scope.get(INFO_KEY)
        ip = info.client_ip if info is not None else client_ip(scope, self._trusted)
        return ip or "unknown"

    async def key_for(self, scope: Scope) -> str | None:
        """The client key of a request, or None when the client is on the allow list."""
        ip: str | None = None
        key: str | None = None
        if self._key_header is not None:
            for name, value in scope.get("headers") or ():
                if name == self._key_header:
                    if self._allow_keys and value.decode("latin-1") in self._allow_keys:
                        return None
                    # A digest, not the value: API keys are secrets that must not land in a
                    # shared storage or a log line, and a huge header must not become a
                    # huge storage key.
                    key = "header:" + hashlib.blake2b(value, digest_size=16).hexdigest()
                    break
        elif self._key_func is not None:
            result = self._key_func(scope)
            if self._key_async or inspect.isawaitable(result):
                result = await result  # type: ignore[misc]
            if result is not None:
                key = str(result)
                if key in self._allow_keys:
                    return None
                if len(key) > 64:  # bound the storage key a callable may produce
                    key = "key:" + hashlib.blake2b(key.encode(), digest_size=16).hexdigest()
        if key is None or self._allow_nets:
            ip = self._ip(scope)
            if self._allow_nets and _in_networks(ip, self._allow_nets):
                return None
            if self._allow_keys and ip in self._allow_keys:
                return None
        return key if key is not None else ip

    # -- deciding --------------------------------------------------------------------

    async def _hit(self, rule: _Rule | _DepRule, limit: _Limit, key: str) -> bool:
        if self._sync is not None:
            return bool(self._sync.hit(limit.item, rule.name, key))
        assert self._limiter is not None
        return bool(await self._limiter.call("hit", limit.item, rule.name, key))

    async def _stats(self, rule: _Rule | _DepRule, limit: _Limit, key: str) -> tuple[float, int]:
        if self._sync is not None:
            stats = self._sync.get_window_stats(limit.item, rule.name, key)
        else:
            assert self._limiter is not None
            stats = await self._limiter.call("get_window_stats", limit.item, rule.name, key)
        return float(stats.reset_time), int(stats.remaining)

    def decide_memory(
        self,
        plan: Iterable[tuple[_Rule | _DepRule, _Limit, dict[str, Any], int]],
        key: str,
        want_stats: bool,
    ) -> tuple[_Rule | _DepRule | None, _Limit | None, int, int]:
        """``decide`` over the memory store: one call per limit answers hit and stats."""
        now = time.time()
        hit = self._memory_hit
        best: _Limit | None = None
        best_remaining, best_reset = 1 << 62, 0.0
        for rule, limit, table, tid in plan:
            allowed, remaining, reset = hit(table, tid, key, limit.n, limit.expiry, now)
            if not allowed:
                return rule, limit, 0, max(1, math.ceil(reset - now))
            if remaining < best_remaining:
                best, best_remaining, best_reset = limit, remaining, reset
        if not want_stats:
            return None, None, 0, 0
        return None, best, best_remaining, max(0, math.ceil(best_reset - now))

    async def decide(
        self, chain: Iterable[_Rule | _DepRule], key: str, *, want_stats: bool
    ) -> tuple[_Rule | _DepRule | None, _Limit | None, int, int]:
        """Charge ``key`` to every limit of ``chain``.

        Returns ``(rule, limit, remaining, reset_seconds)``: the rule and limit that
        rejected (remaining 0), or ``(None, tightest_limit, remaining, reset)`` when allowed
        (stats only when ``want_stats``). Raises ``_StorageDown`` past the retry budget.
        """
        if self._memory is not None:
            return self.decide_memory(self._plan(chain), key, want_stats)
        for rule in chain:
            for limit in rule.limits:
                if not await self._hit(rule, limit, key):
                    reset, _ = await self._stats(rule, limit, key)
                    return rule, limit, 0, max(1, math.ceil(reset - time.time()))
        if not want_stats:
            return None, None, 0, 0
        best: tuple[_Limit | None, int, float] = (None, 1 << 62, 0.0)
        for rule in chain:
            for limit in rule.limits:
                reset, remaining = await self._stats(rule, limit, key)
                if remaining < best[1]:
                    best = (limit, remaining, reset)
        return None, best[0], best[1], max(0, math.ceil(best[2] - time.time()))

    def record_rejection(self, rule: _Rule, limit: _Limit, key: str, route: str) -> None:
        """Count a rejection and log it, throttled (the line says how many it stands for)."""
        rule.rejections.inc()
        suppressed = rule.throttle.allow()
        if suppressed is not None:
            _log.warning(
                "rate_limit_exceeded",
                limit=str(limit.item),
                route=route,
                key=key,
                suppressed=suppressed,
            )

    def count_rejection(self, route: str) -> None:
        """Count a rejection made outside the middleware's rules (the FastAPI dependency)."""
        self._rejections.labels(route).inc()

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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope[SCOPE_KEY] = self
        path: str = scope["path"]
        if path in self._exempt:
            await self.app(scope, receive, send)
            return
        rule = self._default if self._default_only else self._match(scope["method"], path)
        if rule is None:
            await self.app(scope, receive, send)
            return
        key: str | None
        if self._ip_key:
            info: RequestInfo | None = scope.get(INFO_KEY)
            key = (
                info.client_ip if info is not None else client_ip(scope, self._trusted)
            ) or "unknown"
        else:
            key = await self.key_for(scope)
            if key is None:
                await self.app(scope, receive, send)
                return
        if self._memory is not None:
            # ``decide_memory`` inlined: this is the per-request path of the default setup.
            now = time.time()
            hit = self._memory_hit
            rejected: _Rule | _DepRule | None = None
            limit: _Limit | None = None
            remaining, reset_at = 1 << 62, 0.0
            for owner, item, table, tid in rule.plan:
                allowed, left, at = hit(table, tid, key, item.n, item.expiry, now)
                if not allowed:
                    rejected, limit = owner, item
                    reset = max(1, math.ceil(at - now))
                    break
                if left < remaining:
                    limit, remaining, reset_at = item, left, at
            else:
                if not self._headers:
                    await self.app(scope, receive, send)
                    return
                reset = math.ceil(reset_at - now)
                if reset < 0:
                    reset = 0
        else:
            try:
                rejected, limit, remaining, reset = await self.decide(
                    rule.chain, key, want_stats=self._headers
                )
            except _StorageDown as exc:
                self.record_outage(exc)
                if self.fail_open:
                    await self.app(scope, receive, send)
                    return
                await _send_body(send, 503, _UNAVAILABLE_BODY, [], scope["method"] == "HEAD")
                return
        if rejected is not None and limit is not None:
            self.record_rejection(cast(_Rule, rejected), limit, key, rejected.name)
            if rejected.name != "*":
                # The app never ran, so no framework named the route: the limit's own
                # pattern is the template the metrics and the access log should show.
                scope.setdefault(ROUTE_KEY, rejected.name.rpartition(" ")[2])
            seconds = str(reset).encode("ascii")
            extra = [
                (b"retry-after", seconds),
                (b"ratelimit-limit", limit.amount),
                (b"ratelimit-remaining", b"0"),
                (b"ratelimit-reset", seconds),
            ]
            await _send_body(send, 429, limit.body, extra, scope["method"] == "HEAD")
            return
        if limit is None:
            await self.app(scope, receive, send)
            return
        extra = [
            (b"ratelimit-limit", limit.amount),
            (b"ratelimit-remaining", _ascii(remaining)),
            (b"ratelimit-reset", _ascii(reset)),
        ]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*(message.get("headers") or ()), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


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


def _in_networks(ip: str, nets: Sequence[IPNetwork]) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(addr in net for net in nets)


# --- FastAPI dependency -----------------------------------------------------------------


def fastapi_dependency(limit: str) -> Callable[..., Awaitable[None]]:
    """A FastAPI dependency enforcing ``limit`` on one route, through the middleware's storage.

    It uses the ``RateLimitMiddleware`` found in the request scope: the same storage,
    strategy, key (and allow list), counters and 429, raised as an ``HTTPException`` so the
    framework renders ``{"detail": ...}`` with ``Retry-After`` and ``RateLimit-*``. The
    dependency counts per method and route template, apart from the middleware's limits.
    """
    from starlette.exceptions import HTTPException
    from starlette.requests import Request

    from buttress._routes import UNMATCHED as _UNMATCHED
    from buttress._routes import resolve_route
    from buttress.logs import LogThrottle

    template = _Rule("dependency", limit, 10.0)  # parsed (and validated) at declaration
    throttle = LogThrottle(10.0)

    async def dependency(request: Request) -> None:
        scope = request.scope
        middleware: RateLimitMiddleware | None = scope.get(SCOPE_KEY)
        if middleware is None:
            raise RuntimeError(
                "buttress.fastapi.rate_limit() needs RateLimitMiddleware around the app; "
                "use buttress.wrap(app) or add RateLimitMiddleware(app, ...) yourself."
            )
        key = await middleware.key_for(scope)
        if key is None:
            return
        route = resolve_route(scope, scope.get(INFO_KEY)) or _UNMATCHED
        rule = _DepRule(f"dep {request.method} {route}", template.limits)
        try:
            rejected, item, _, reset = await middleware.decide((rule,), key, want_stats=False)
        except _StorageDown as exc:
            middleware.record_outage(exc)
            if middleware.fail_open:
                return
            raise HTTPException(503, "Rate limiter unavailable") from None
        if rejected is None or item is None:
            return
        middleware.count_rejection(route)
        suppressed = throttle.allow()
        if suppressed is not None:
            _log.warning(
                "rate_limit_exceeded",
                limit=str(item.item),
                route=route,
                key=key,
                suppressed=suppressed,
            )
        seconds = str(reset)
        raise HTTPException(
            429,
            item.detail,
            headers={
                "Retry-After": seconds,
                "RateLimit-Limit": str(item.item.amount),
                "RateLimit-Remaining": "0",
                "RateLimit-Reset": seconds,
            },
        )

    # Resolved here: FastAPI cannot see this function's local import of ``Request``.
    dependency.__annotations__ = {"request": Request, "return": None}
    return dependency


class _DepRule:
    """A dependency's limits under one route's storage identifier."""

    __slots__ = ("limits", "name")

    def __init__(self, name: str, limits: tuple[_Limit, ...]) -> None:
        self.name = name
        self.limits = limits


# --- start-up warning -------------------------------------------------------------------


def warn_if_memory_with_workers(settings: Settings, workers: int) -> str | None:
    """Log (and return) a warning when ``memory://`` limits are served by several workers."""
    limited = bool(settings.rate_limit or settings.rate_limits)
    if workers <= 1 or not limited or not settings.rate_limit_storage.startswith("memory://"):
        return None
    message = (
        f"BUTTRESS_RATE_LIMIT_STORAGE=memory:// with {workers} workers: each worker process "
        f"keeps its own counters, so every rate limit is multiplied by {workers}. "
        "Set BUTTRESS_RATE_LIMIT_STORAGE=redis://host:6379 to share one limit across workers "
        "and instances."
    )
    _log.warning("rate_limit_memory_with_workers", message=message, workers=workers)
    return message
