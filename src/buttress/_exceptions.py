"""What an exception means to the client: its status, its detail and its headers.

Shared by the error layer (which answers with it) and Sentry's ``before_send`` (which tags
events captured by others with it), so both agree without importing each other.

# Strategy: a mapped exception's text is not the client's detail by default. ``str(exc)``
# of a database or driver error carries SQL, parameters and host names; mapping
# ``IntegrityError`` to 409 must not put them in front of clients. A mapping is a status
# (the detail is its reason phrase, "Conflict"), or ``(status, detail)`` where the detail
# is fixed text or a callable of the exception (``str`` to opt in to the message).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from buttress._asgi import Headers, reason

__all__ = ["INTERNAL_ERROR_DETAIL", "ExceptionMap", "exception_status", "normalize_map"]

INTERNAL_ERROR_DETAIL = "Internal server error"

#: ``{ExceptionClass: status}`` or ``{ExceptionClass: (status, detail or callable)}``.
ExceptionMap = Mapping[type[BaseException], Any]
Rule = tuple[int, Any]


def normalize_map(mapping: ExceptionMap, keyword: str = "exception_map") -> dict[type, Rule]:
    """``mapping`` as ``{class: (status, detail)}``; ``ValueError`` names a bad entry."""
    out: dict[type, Rule] = {}
    for klass, value in mapping.items():
        if not (isinstance(klass, type) and issubclass(klass, BaseException)):
            raise TypeError(f"{keyword} key {klass!r} is not an exception class")
        status, detail = (value, None) if not isinstance(value, (tuple, list)) else (*value,)
        if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
            raise ValueError(
                f"{keyword}[{klass.__name__}]={value!r}: expected a status from 400 to 599, "
                "or (status, detail) where detail is text or a callable of the exception"
            )
        out[klass] = (status, detail)
    return out


def _detail(exc: BaseException, status: int, detail: Any) -> Any:
    if detail is None:
        return reason(status)
    if callable(detail):
        try:
            result = detail(exc)
        except Exception:
            return reason(status)
        return result if result not in (None, "") else reason(status)
    return detail


def exception_status(
    exc: BaseException, exception_map: Mapping[type, Rule]
) -> tuple[int, Any, Headers] | None:
    """``(status, detail, headers)`` for an HTTP or mapped exception, None for any other.

    Starlette's ``HTTPException`` (FastAPI's is a subclass) answers with its own status,
    detail and headers (headers that cannot travel in HTTP are dropped); a mapped
    exception (its class or any base class in the map) with the mapped status and detail.
    """
    from starlette.exceptions import HTTPException

    if isinstance(exc, HTTPException):
        headers: Headers = []
        for key, value in (exc.headers or {}).items():
            try:
                headers.append((str(key).lower().encode("latin-1"), str(value).encode("latin-1")))
            except UnicodeEncodeError:
                continue  # not representable in HTTP/1.1: dropped rather than failing
        return exc.status_code, exc.detail, headers
    for klass in type(exc).__mro__:
        rule = exception_map.get(klass)
        if rule is not None:
            status, detail = rule
            return status, _detail(exc, status, detail), []
    return None


DetailFn = Callable[[BaseException], Any]
