"""The retry policy behind ``buttress.retry``: tenacity, with every retry logged, counted and breadcrumbed.

See ``buttress.retry`` for the public face and the reasons.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast

if TYPE_CHECKING:
    import tenacity
    from prometheus_client import CollectorRegistry, Counter

__all__ = [
    "ExceptionPredicate",
    "ExceptionTypes",
    "ResultPredicate",
    "Sleep",
    "Transient",
    "retries_counter",
]

P = ParamSpec("P")
R = TypeVar("R")

ExceptionTypes = type[BaseException] | tuple[type[BaseException], ...]
ExceptionPredicate = Callable[[BaseException], bool]
ResultPredicate = Callable[[Any], bool]
Sleep = Callable[[float], Any]

OUTCOMES = ("retried", "recovered", "exhausted")
_MESSAGE_MAX = 300
_LOGGER = "buttress.retry"


# --- the retries_total counter ----------------------------------------------------------


def retries_counter(registry: CollectorRegistry | None = None, namespace: str = "") -> Counter:
    """The ``retries_total{function,outcome}`` counter of ``registry``, registered once.

    Pass the registry your metrics endpoint serves (``wrap(app, registry=r)`` and
    ``transient(registry=r)``) so retries appear next to the HTTP metrics.
    """
    from buttress._registry import default_registry, shared_counter

    # The process-wide registry, served by every stack's metrics endpoint, unless told
    # otherwise; looked up on the first retry, never at import time.
    return shared_counter(
        "retries",
        "Retries of calls decorated with buttress.retry, by function and outcome.",
        ("function", "outcome"),
        registry=registry if registry is not None else default_registry(),
        namespace=namespace,
    )


# --- observability hooks ----------------------------------------------------------------


class _Observer:
    """Logs, counts and leaves breadcrumbs for one decorated function (or block)."""

    def __init__(
        self, function: str, registry: CollectorRegistry | None, namespace: Callable[[], str]
    ) -> None:
        self.function = function
        self._registry = registry
        self._namespace = namespace
        self._children: dict[str, Any] | None = None

    def _count(self, outcome: str) -> None:
        # The counter is looked up on first use, never at import or decoration time.
        children = self._children
        if children is None:
            counter = retries_counter(self._registry, self._namespace())
            children = {o: counter.labels(self.function, o) for o in OUTCOMES}
            self._children = children
        children[outcome].inc()

    def _describe(self, rs: tenacity.RetryCallState) -> dict[str, Any]:
        fut = rs.outcome
        if fut is not None and fut.failed:
            exc = fut.exception()
            # The first line only: SQLAlchemy and others append the statement and its
            # parameters (user data) on the following lines.
            message = str(exc).partition("\n")[0]
            return {"error_type": type(exc).__name__, "error_message": message[:_MESSAGE_MAX]}
        result = fut.result() if fut is not None else None
        return {"result": repr(result)[:_MESSAGE_MAX]}

    def retrying(self, rs: tenacity.RetryCallState) -> None:
        """Before sleeping: one failed attempt that will be retried."""
        import structlog

        detail = self._describe(rs)
        wait = round(rs.upcoming_sleep, 3)
        structlog.get_logger(_LOGGER).warning(
            "retrying", function=self.function, attempt=rs.attempt_number, wait=wait, **detail
        )
        self._count("retried")
        _breadcrumb(
            f"{self.function}: attempt {rs.attempt_number} failed, retrying in {wait}s",
            "warning",
            {"function": self.function, "attempt": rs.attempt_number, "wait": wait, **detail},
        )

    def recovered(self, rs: tenacity.RetryCallState) -> None:
        """A retried call succeeded."""
        import structlog

        structlog.get_logger(_LOGGER).info(
            "retry_recovered", function=self.function, attempts=rs.attempt_number
        )
        self._count("recovered")
        _breadcrumb(
            f"{self.function}: attempt {rs.attempt_number} succeeded",
            "info",
            {"function": self.function, "attempt": rs.attempt_number},
        )

    def exhausted(self, rs: tenacity.RetryCallState) -> Any:
        """The last attempt failed: raise its exception (or return its result)."""
        import structlog

        detail = self._describe(rs)
        structlog.get_logger(_LOGGER).warning(
            "retries_exhausted", function=self.function, attempts=rs.attempt_number, **detail
        )
        self._count("exhausted")
        _breadcrumb(
            f"{self.function}: attempt {rs.attempt_number} failed, giving up",
            "error",
            {"function": self.function, "attempt": rs.attempt_number, **detail},
        )
        fut = rs.outcome
        assert fut is not None
        exc = fut.exception()
        if exc is not None:
            # The original exception, with its own traceback: the error layer and Sentry
            # see the real failure, not a tenacity RetryError.
            raise exc.with_traceback(exc.__traceback__)
        return fut.result()


def _breadcrumb(message: str, level: str, data: dict[str, Any]) -> None:
    import sentry_sdk

    # Without an active client sentry-sdk would log "Dropped breadcrumb" to our handlers.
    if sentry_sdk.get_client().is_active():
        sentry_sdk.add_breadcrumb(category="retry", message=message, level=level, data=data)


class _Condition:
    """tenacity's retry predicate: the exception or result condition; notes recoveries."""

    def __init__(
        self, on: ExceptionPredicate, result: ResultPredicate | None, observer: _Observer
    ) -> None:
        self._on = on
        self._result = result
        self._observer = observer

    def __call__(self, rs: tenacity.RetryCallState) -> bool:
        fut = rs.outcome
        assert fut is not None
        exc = fut.exception()
        if exc is not None:
            return bool(self._on(exc))
        if self._result is not None and self._result(fut.result()):
            return True
        if rs.attempt_number > 1:
            self._observer.recovered(rs)
        return False


def _exception_predicate(on: ExceptionTypes | ExceptionPredicate) -> ExceptionPredicate:
    if isinstance(on, (type, tuple)):
        types = on
        return lambda exc: isinstance(exc, types)
    if callable(on):
        return on
    raise TypeError(
        f"on={on!r} is neither exception classes nor a predicate; pass e.g. "
        "on=(ConnectionError, TimeoutError) or on=lambda exc: ..."
    )


class _Stop:
    """Stop after ``attempts``, or when the next wait would end past the deadline."""

    def __init__(self, attempts: int, end: float | None, clock: Callable[[], float]) -> None:
        self._attempts = attempts
        self._end = end
        self._clock = clock

    def __call__(self, rs: tenacity.RetryCallState) -> bool:
        if rs.attempt_number >= self._attempts:
            return True
        return self._end is not None and self._clock() + rs.upcoming_sleep > self._end


# --- the public policy ------------------------------------------------------------------


class Transient:
    """A retry policy for transient failures; use it as a decorator or iterate its attempts.

    Build it with ``transient(...)``. Decorating works on sync and async functions alike;
    ``attempts()`` and ``async_attempts()`` give tenacity's block style with the same
    logging, metrics and breadcrumbs.
    """

    def __init__(
        self,
        *,
        on: ExceptionTypes | ExceptionPredicate,
        attempts: int | None,
        wait_min: float | None,
        wait_max: float | None,
        deadline: float | None,
        result: ResultPredicate | None,
        registry: CollectorRegistry | None,
        namespace: str | None,
        sleep: Sleep | None,
        clock: Callable[[], float],
        name: str | None = None,
        defaults: Mapping[str, Any] | None = None,
    ) -> None:
        if attempts is not None and attempts < 1:
            raise ValueError(f"attempts={attempts!r} must be at least 1 (1 means no retry).")
        for label, wait in (("wait_min", wait_min), ("wait_max", wait_max)):
            if wait is not None and not wait >= 0:
                raise ValueError(f"{label}={wait!r} must be 0 or more seconds.")
        if wait_min is not None and wait_max is not None and wait_min > wait_max:
            raise ValueError(
                f"wait_min={wait_min!r} and wait_max={wait_max!r} must satisfy "
                "0 <= wait_min <= wait_max (seconds)."
            )
        if deadline is not None and deadline <= 0:
            raise ValueError(f"deadline={deadline!r} must be a positive number of seconds.")
        self._predicate = _exception_predicate(on)
        self.on = on
        # Unset numbers are read from ``defaults`` when used, so ``configure_retries`` (run
        # by ``wrap()``) reaches policies decorated at import time, before it ran.
        self._given: dict[str, Any] = {
            "attempts": attempts,
            "wait_min": wait_min,
            "wait_max": wait_max,
            "namespace": namespace,
        }
        self._defaults: Mapping[str, Any] = defaults if defaults is not None else {}
        self.deadline = deadline
        self.result = result
        self._registry = registry
        self._sleep = sleep
        self._clock = clock
        self.name = name

    def _value(self, key: str) -> Any:
        given = self._given[key]
        return self._defaults.get(key) if given is None else given

    @property
    def attempts_max(self) -> int:
        return int(self._value("attempts") or 1)

    @property
    def wait_min(self) -> float:
        return float(self._value("wait_min") or 0.0)

    @property
    def wait_max(self) -> float:
        return float(self._value("wait_max") or 0.0)

    def _wait(self) -> Any:
        import tenacity

        lo, hi = self.wait_min, self.wait_max
        if lo > hi:
            raise ValueError(
                f"wait_min={lo!r} and wait_max={hi!r} must satisfy 0 <= wait_min <= wait_max "
                "(seconds); one of them comes from configure_retries()."
            )
        # Full jitter: a random wait in [wait_min, min(wait_max, wait_min * 2**(n-1))], so
        # the first retry waits wait_min and many clients failing together spread out.
        return tenacity.wait_random_exponential(multiplier=lo, min=lo, max=hi)

    def __repr__(self) -> str:
        return (
            f"transient(on={self.on!r}, attempts={self.attempts_max}, wait_min={self.wait_min}, "
            f"wait_max={self.wait_max}, deadline={self.deadline})"
        )

    def _options(self, observer: _Observer, start: float) -> dict[str, Any]:
        """tenacity options for one call; the deadline counts from ``start``."""
        end = None if self.deadline is None else start + self.deadline
        return {
            "stop": _Stop(self.attempts_max, end, self._clock),
            "wait": self._wait(),
            "retry": _Condition(self._predicate, self.result, observer),
            "before_sleep": observer.retrying,
            "retry_error_callback": observer.exhausted,
            "reraise": True,
        }

    def _observer(self, function: str) -> _Observer:
        return _Observer(function, self._registry, lambda: str(self._value("namespace") or ""))

    def attempts(self, name: str = "attempts") -> tenacity.Retrying:
        """Iterate attempts of a block: ``for attempt in policy.attempts("load"): with attempt: ...``.

        ``name`` is the ``function`` in logs and metrics. Result predicates do not apply
        here (a ``with`` block has no return value), only the exception condition.
        """
        import tenacity

        options = self._options(self._observer(name), self._clock())
        if self._sleep is not None:
            options["sleep"] = self._sleep
        # ``name`` labels our own logs and metrics; tenacity's ``name=`` (9.2.1+) would only
        # rename its repr and its log helpers, which these policies do not use.
        return tenacity.Retrying(**options)

    def async_attempts(self, name: str = "attempts") -> tenacity.AsyncRetrying:
        """``async for attempt in policy.async_attempts("load"): with attempt: ...``."""
        import tenacity

        options = self._options(self._observer(name), self._clock())
        options["sleep"] = _async_sleep(self._sleep)
        return tenacity.AsyncRetrying(**options)

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        """Decorate ``fn`` (sync or async); the wrapper keeps its name and signature."""
        import tenacity

        observer = self._observer(self.name or _function_name(fn))
        retryable, retry_result, clock = self._predicate, self.result, self._clock
        # Strategy: the first attempt runs without tenacity (whose bookkeeping costs tens of
        # microseconds per call); only a retryable outcome hands over to tenacity, which
        # replays that first outcome as its attempt 1, so logs, waits and the deadline are
        # exactly those of a call tenacity ran from the start.
        if _is_async(fn):
            sleep = _async_sleep(self._sleep)

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                start = clock()
                try:
                    value = await cast("Any", fn)(*args, **kwargs)
                except BaseException as exc:
                    if not retryable(exc):
                        raise
                    replay = _AsyncReplay(fn, exc, None)
                else:
                    if retry_result is None or not retry_result(value):
                        return value
                    replay = _AsyncReplay(fn, None, value)
                retrying = tenacity.AsyncRetrying(sleep=sleep, **self._options(observer, start))
                return await retrying(replay, *args, **kwargs)

            return cast("Callable[P, R]", async_wrapper)

        sync_sleep = self._sleep if self._sleep is not None else time.sleep

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = clock()
            try:
                value = fn(*args, **kwargs)
            except BaseException as exc:
                if not retryable(exc):
                    raise
                replay = _Replay(fn, exc, None)
            else:
                if retry_result is None or not retry_result(value):
                    return value
                replay = _Replay(fn, None, value)
            retrying = tenacity.Retrying(sleep=sync_sleep, **self._options(observer, start))
            return retrying(replay, *args, **kwargs)

        return cast("Callable[P, R]", wrapper)


class _Replay:
    """Gives tenacity the first attempt's outcome again, then calls the function."""

    def __init__(self, fn: Callable[..., Any], exc: BaseException | None, value: Any) -> None:
        self.fn = fn
        self.exc = exc
        self.value = value
        self.replayed = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.replayed:
            return self.fn(*args, **kwargs)
        self.replayed = True
        if self.exc is not None:
            raise self.exc
        return self.value


class _AsyncReplay(_Replay):
    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.replayed:
            return await self.fn(*args, **kwargs)
        self.replayed = True
        if self.exc is not None:
            raise self.exc
        return self.value


def _function_name(fn: Callable[..., Any]) -> str:
    # Module-qualified: a bare qualname like "fetch" would merge two modules' series.
    target = fn if hasattr(fn, "__qualname__") else type(fn)
    return f"{target.__module__}.{target.__qualname__}"


def _is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - an object with an async __call__
    )


def _async_sleep(sleep: Sleep | None) -> Callable[[float], Awaitable[None]]:
    """An awaitable sleep from an injected one that may be sync (a fake clock) or async."""
    if sleep is None:
        import asyncio

        return asyncio.sleep

    async def call(seconds: float) -> None:
        outcome = sleep(seconds)
        if inspect.isawaitable(outcome):
            await outcome

    return call
