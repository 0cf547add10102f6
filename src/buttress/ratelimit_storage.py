"""Rate-limit storages: ``memory://`` in process, every remote one through ``limits.aio``.

# Strategy: storages. Remote storages (Redis in every flavour, memcached) go through
# ``limits.aio`` so no storage call blocks the event loop. ``memory://`` uses buttress'
# ``MemoryStore``: plain dict operations with no I/O cannot block the loop, and they are
# several times cheaper than limits' asyncio memory storage, whose background expiry
# task respawns under a busy loop (see ``shared/PERF-NOTES.md`` and the README).

# Strategy: outages. A storage error is retried with tenacity, and the whole decision is
# bounded by one time budget (``RateLimitMiddleware(retry_budget=)``, 50 ms by default):
# a refused connection fails at once, a frozen or black-holed server is cut off at the
# budget instead of waiting out socket timeouts. Then the request passes (fail-open, the
# default) or gets a 503 (fail-closed). The redis client reconnects by itself, so limiting
# resumes when the storage is back.

# Strategy: Redis. The storage is still limits' (it builds the redis-py client for every
# URI flavour: plain, TLS, unix socket, Sentinel, Cluster), but decisions over it run
# buttress' own script on that client, one round trip each (``ratelimit_redis``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, TypeVar

import structlog

from buttress.config import mask_uri
from buttress.ratelimit_memory import MemoryStore

if TYPE_CHECKING:
    from limits import RateLimitItem

__all__ = [
    "STRATEGIES",
    "Limiter",
    "StorageDown",
    "check_strategy",
    "close_storage",
    "retry_within",
    "storage_for",
    "warn_if_memory_with_workers",
]

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
T = TypeVar("T")
STRATEGIES: Final = ("fixed-window", "moving-window", "sliding-window-counter")


class StorageDown(Exception):
    """The storage failed for longer than the retry budget."""


def check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(
            f"strategy={strategy!r} is not a strategy; use "
            "'fixed-window', 'moving-window' or 'sliding-window-counter'."
        )


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
        return MemoryStore(**options)
    if scheme.startswith("async+"):
        target = uri
        scheme = scheme.removeprefix("async+")
    elif scheme in _ASYNC_SCHEMES:
        target = _ASYNC_SCHEMES[scheme] + uri[len(scheme) :]
    else:
        raise ValueError(
            f"BUTTRESS_RATE_LIMIT_STORAGE={mask_uri(uri)!r} is not a supported storage; use "
            "memory://, redis://, rediss://, redis+sentinel://, redis+cluster:// or memcached://."
        )
    opts: dict[str, Any] = {"wrap_exceptions": True}
    if scheme in _REDIS_SCHEMES:
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # No socket timeout: the decision budget cuts off every call (a frozen server
        # included), and redis-py runs each send in a task of its own when one is set.
        opts.update(
            implementation="redispy",
            socket_connect_timeout=0.5,
            socket_timeout=None,
            retry=Retry(NoBackoff(), 0),
        )
    opts.update(options)
    try:
        return storage_from_string(target, **opts)
    except ConfigurationError as exc:
        extra = "redis" if scheme in _REDIS_SCHEMES else "memcached"
        raise ValueError(
            f"BUTTRESS_RATE_LIMIT_STORAGE={mask_uri(uri)!r} cannot be used: {exc}. "
            f"Install the client: pip install 'buttress[{extra}]'."
        ) from None


def _is_sync(storage: Any) -> bool:
    from limits.storage import Storage

    return isinstance(storage, Storage)


class Limiter:
    """One strategy over one storage: sync for in-process memory, ``limits.aio`` otherwise."""

    def __init__(self, storage: Any, strategy: str, retry_budget: float) -> None:
        check_strategy(strategy)
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
                f"strategy={strategy!r} is not supported by the "
                f"{type(storage).__name__} storage; use 'fixed-window' or "
                "'sliding-window-counter'."
            ) from None
        self._budget = retry_budget
        from limits.errors import StorageError

        #: What counts as the storage being down (retried, then ``StorageDown``).
        self.errors: tuple[type[BaseException], ...] = (StorageError, OSError, TimeoutError)

    async def call(self, method: str, item: RateLimitItem, *ids: str, **options: Any) -> Any:
        """Call an async strategy method, retrying storage errors within the budget."""
        func = getattr(self.aio, method)
        try:
            return await func(item, *ids, **options)
        except self.errors:
            pass
        return await _retry(self._budget, self.errors, func, item, *ids, **options)


async def retry_within(
    func: Callable[..., Awaitable[T]],
    budget: float,
    errors: tuple[type[BaseException], ...],
    *args: Any,
) -> T:
    """``await func(*args)``, retrying ``errors`` for ``budget`` seconds, then ``StorageDown``."""
    try:
        return await func(*args)
    except errors:
        pass
    return await _retry(budget, errors, func, *args)


async def _retry(
    budget: float,
    errors: tuple[type[BaseException], ...],
    func: Callable[..., Awaitable[T]],
    *args: Any,
    **options: Any,
) -> T:
    from tenacity import (
        AsyncRetrying,
        RetryError,
        retry_if_exception_type,
        stop_after_delay,
        wait_exponential,
    )

    retrying = AsyncRetrying(
        stop=stop_after_delay(budget),
        wait=wait_exponential(multiplier=0.005, max=0.02),
        retry=retry_if_exception_type(errors),
    )
    try:
        async for attempt in retrying:
            with attempt:
                return await func(*args, **options)
    except RetryError as exc:
        raise StorageDown(str(exc.last_attempt.exception())) from None
    raise StorageDown("no attempt was made")  # pragma: no cover


async def close_storage(storage: Any) -> None:
    """Close a ``limits.aio`` storage's connections (a no-op for ``memory://``).

    limits offers no public close; its redis storages keep the redis-py client on
    ``storage.bridge.storage`` (limits 4-5). tests/test_ratelimit.py closes a real Redis
    storage through this and fails the day that attribute moves; here a storage of a
    known kind without it raises rather than leaking connections silently.
    """
    if isinstance(storage, MemoryStore):
        return
    bridge = getattr(storage, "bridge", None)
    client = getattr(bridge, "storage", None) if bridge is not None else None
    close = getattr(client, "aclose", None)
    if close is None:
        if type(storage).__module__.startswith("limits.aio.storage.redis"):
            raise RuntimeError(
                f"cannot close {type(storage).__name__}: limits no longer keeps its client "
                "on storage.bridge.storage; buttress needs an update for this limits version."
            )
        return
    await close()


def warn_if_memory_with_workers(*, limited: bool, storage: str, workers: int) -> str | None:
    """Log (and return) a warning when ``memory://`` limits are served by several workers."""
    if workers <= 1 or not limited or not storage.startswith("memory://"):
        return None
    message = (
        f"BUTTRESS_RATE_LIMIT_STORAGE=memory:// with {workers} workers: each worker process "
        f"keeps its own counters, so every rate limit is multiplied by {workers}. "
        "Set BUTTRESS_RATE_LIMIT_STORAGE=redis://host:6379 to share one limit across workers "
        "and instances."
    )
    structlog.get_logger("buttress.ratelimit").warning(
        "rate_limit_memory_with_workers", message=message, workers=workers
    )
    return message
