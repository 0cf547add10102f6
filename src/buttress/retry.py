"""Observable retries around the calls that can fail for a moment: ``transient()`` on tenacity.

buttress never replays a client's request (a request body is a stream that has been read,
the handler may have had effects that must not happen twice, and retrying whole requests
multiplies load exactly when a dependency is struggling). Retries belong around the one
dependency call that is known to be safe to repeat::

    from buttress.retry import transient

    @transient(on=(ConnectionError, TimeoutError))
    async def fetch_user(user_id: int) -> dict: ...

Every retry is visible: a ``retrying`` warning on the ``buttress.retry`` logger (carrying
the request id of the request it happened in, through the bound log context), a
``retries_total{function,outcome}`` counter (``retried``, ``recovered``, ``exhausted``) and
a Sentry breadcrumb per failed attempt. After the last attempt the ORIGINAL exception is
raised, with its own traceback, so the error layer and Sentry report the real failure.

# Strategy: the policy (what to retry, how long to wait, when to stop) is computed once
# when the decorator is created; a fresh tenacity ``Retrying`` is built per call because
# tenacity keeps its iteration state per object and thread, which concurrent coroutines
# of one thread would otherwise share. The observability hooks are tenacity callbacks, so
# the decorator and the ``for attempt in policy.attempts()`` style behave the same.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from buttress.config import option
from buttress.retry_policy import (
    ExceptionPredicate,
    ExceptionTypes,
    ResultPredicate,
    Sleep,
    Transient,
    retries_counter,
)

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["Transient", "configure_retries", "httpx", "retries_counter", "sqlalchemy", "transient"]

P = ParamSpec("P")
R = TypeVar("R")

#: What ``transient()`` uses for what its caller left unset; ``configure_retries`` sets it.
_DEFAULTS: dict[str, Any] = {"attempts": 3, "wait_min": 0.5, "wait_max": 4.0, "namespace": ""}


def configure_retries(
    *, attempts: int = 3, wait_min: float = 0.5, wait_max: float = 4.0, namespace: str = ""
) -> None:
    """Set the defaults of every ``transient()`` policy, also ones decorated before.

    ``wrap()`` calls it with ``BUTTRESS_RETRY_*`` and the metrics namespace, so decorators
    that run at import time (before the app is wrapped) still follow the settings: a policy
    reads what it was not given at its first call.
    """
    _DEFAULTS.update(
        attempts=option("attempts", "retry_attempts", attempts),
        wait_min=option("wait_min", "retry_wait_min", wait_min),
        wait_max=option("wait_max", "retry_wait_max", wait_max),
        namespace=option("namespace", "metrics_namespace", namespace),
    )


def transient(
    on: ExceptionTypes | ExceptionPredicate = (ConnectionError, TimeoutError),
    *,
    attempts: int | None = None,
    wait_min: float | None = None,
    wait_max: float | None = None,
    deadline: float | None = None,
    result: ResultPredicate | None = None,
    registry: CollectorRegistry | None = None,
    sleep: Sleep | None = None,
    clock: Callable[[], float] | None = None,
    name: str | None = None,
) -> Transient:
    """A retry policy for calls that fail for a moment; use it as a decorator.

    ``on`` is exception classes or a predicate of the exception; ``result`` a predicate of
    the return value that also means "try again" (an HTTP 503 response). Unset numbers
    come from ``configure_retries`` (``wrap()`` passes ``BUTTRESS_RETRY_ATTEMPTS`` /
    ``_WAIT_MIN`` / ``_WAIT_MAX`` there) at the first call, else 3 attempts, 0.5-4 s. Waits
    grow exponentially with full jitter between ``wait_min`` and ``wait_max``.
    ``deadline`` (seconds from the call) stops retrying when the next wait would end past it.

    After the last attempt the original exception is raised; when only the result
    predicate kept failing, the last result is returned. ``name`` is the ``function`` in
    logs and metrics (default: the decorated function's module and qualname).
    ``registry`` is where ``retries_total`` lives (default: the registry the metrics
    endpoint serves); ``sleep`` and ``clock`` replace ``time.sleep``/``asyncio.sleep`` and
    ``time.monotonic`` (tests use a fake clock).
    """
    return Transient(
        on=on,
        attempts=attempts,
        wait_min=wait_min,
        wait_max=wait_max,
        deadline=deadline,
        result=result,
        registry=registry,
        namespace=None,
        sleep=sleep,
        clock=clock or time.monotonic,
        name=name,
        defaults=_DEFAULTS,
    )


# --- presets: the libraries are imported when the preset is used, never before ------------


def sqlalchemy(fn: Callable[P, R] | None = None, /, **options: Any) -> Any:
    """Retry SQLAlchemy's ``OperationalError`` and ``DisconnectionError``.

    ``@sqlalchemy`` or ``@sqlalchemy(attempts=5)``; options are those of ``transient``.
    """
    try:
        from sqlalchemy.exc import DisconnectionError, OperationalError
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError(
            "buttress.retry.sqlalchemy needs SQLAlchemy; install it with 'pip install sqlalchemy'."
        ) from None
    policy = transient((OperationalError, DisconnectionError), **options)
    return policy if fn is None else policy(fn)


_GATEWAY_STATUSES = frozenset({502, 503, 504})


def httpx(fn: Callable[P, R] | None = None, /, **options: Any) -> Any:
    """Retry httpx transport failures (timeouts, network errors) and 502/503/504 responses.

    ``@httpx`` or ``@httpx(attempts=5)``; options are those of ``transient``. When the
    server keeps answering 502/503/504, the last response is returned for you to handle.
    Retry only requests that are safe to repeat (GET, PUT, or with an idempotency key).
    """
    try:
        import httpx as _httpx
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError(
            "buttress.retry.httpx needs httpx; install it with 'pip install httpx'."
        ) from None
    response_type = _httpx.Response

    def gateway_error(value: Any) -> bool:
        return isinstance(value, response_type) and value.status_code in _GATEWAY_STATUSES

    options.setdefault("result", gateway_error)
    policy = transient(
        (_httpx.TimeoutException, _httpx.NetworkError, _httpx.RemoteProtocolError), **options
    )
    return policy if fn is None else policy(fn)
