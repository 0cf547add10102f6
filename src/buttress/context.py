"""Request context: the request id, trace ids and client IP of the request being served.

The values live in ContextVars behind accessor functions, so app code (and the log
processors, and Sentry's ``before_send``) can read them without being handed a request.
Every value is set with a token and reset in ``finally``: nothing leaks into the next
request served by the same task or connection.
"""

from __future__ import annotations

import contextvars
import os
import re
from collections.abc import Callable, Iterable, Sequence
from contextvars import ContextVar
from typing import Any

import structlog

from buttress._asgi import ASGIApp, Receive, Scope, Send
from buttress._request import (
    RECORD_KEY,
    RecordingResponder,
    RequestRecord,
    app_path,
    client_ip,
)
from buttress.config import ACCESS_DEFAULT_FIELDS, IPNetwork, option

__all__ = [
    "RequestContextMiddleware",
    "client_ip",
    "get_client_ip",
    "get_request_id",
    "get_trace_id",
    "new_request_id",
    "parse_traceparent",
    "valid_request_id",
]

#: The record of the request being served in this context (one variable, one set/reset).
_current: ContextVar[RequestRecord | None] = ContextVar("buttress_request", default=None)

_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")
_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")


def get_request_id() -> str | None:
    """The id of the request being served in this context, or None outside a request."""
    info = _current.get()
    return info.request_id if info is not None else None


def get_trace_id() -> str | None:
    """The W3C trace id of the request being served, when it carried a valid traceparent."""
    info = _current.get()
    return info.trace_id if info is not None else None


def get_client_ip() -> str | None:
    """The client IP of the request being served (after trusted-proxy resolution)."""
    info = _current.get()
    return info.client_ip if info is not None else None


_BOUND_KEYS = ("request_id", "method", "path", "client_ip", "trace_id", "span_id")


def _structlog_vars() -> dict[str, ContextVar[Any]]:
    """The ContextVars behind ``structlog.contextvars`` for the keys this layer binds.

    # Strategy: binding through ``bind_contextvars(**kw)`` builds a kwargs dict, a name per
    # key and a token dict on every request; setting structlog's own variables directly
    # costs a fraction of that and is exactly what it does (the values are merged into
    # every event by ``merge_contextvars`` as usual). The variables are made by structlog
    # itself, inside a throwaway context so nothing is bound in the caller's.
    """

    def find() -> dict[str, ContextVar[Any]]:
        structlog.contextvars.bind_contextvars(**dict.fromkeys(_BOUND_KEYS, None))
        found = {}
        for var in contextvars.copy_context():
            name = var.name
            if name.startswith("structlog_") and name[10:] in _BOUND_KEYS:
                found[name[10:]] = var
        return found

    found = contextvars.copy_context().run(find)
    if len(found) != len(_BOUND_KEYS):
        # tests/test_context.py checks this against the installed structlog: an upgrade
        # that stores context differently fails there, and here at start-up, never silently.
        raise RuntimeError("structlog.contextvars no longer keeps one ContextVar per key")
    return found


def _structlog_registry() -> dict[str, ContextVar[Any]]:
    """structlog's own table of its context variables, one per bound key.

    # Strategy: a request must start from a clean structlog context. Under a server each
    # request runs in a task of its own, but a test client (httpx's ``ASGITransport``) or a
    # proxying app serves requests one after another in one task, and a key the app bound
    # with ``bind_contextvars`` would appear on the next request's lines. Scanning every
    # context variable of the process per request costs thousands of instructions; this
    # table holds only structlog's, and while it holds only the keys this layer sets itself
    # (the common case) there is nothing to clean at all. The table is private to
    # structlog: tests/test_context.py fails the day it moves, and so does this lookup.
    """
    registry: dict[str, ContextVar[Any]] = structlog.contextvars._CONTEXT_VARS
    return registry


def _unbind_foreign(
    registry: dict[str, ContextVar[Any]], own: frozenset[ContextVar[Any]]
) -> dict[ContextVar[Any], Any]:
    """Unbind every structlog key but this layer's; return what was bound before."""
    bound: dict[ContextVar[Any], Any] = {}
    for var in list(registry.values()):
        if var not in own:
            value = var.get(Ellipsis)
            if value is not Ellipsis:
                bound[var] = value
                var.set(Ellipsis)
    return bound


def _rebind_foreign(
    registry: dict[str, ContextVar[Any]],
    own: frozenset[ContextVar[Any]],
    bound: dict[ContextVar[Any], Any],
) -> None:
    """Put back the structlog context of before the request; drop what the app bound."""
    for var in list(registry.values()):
        if var not in own:
            before = bound.get(var, Ellipsis)
            if var.get(Ellipsis) is not before:
                var.set(before)


def new_request_id() -> str:
    """A fresh request id: 32 hex characters of a random (version 4) UUID."""
    # The same bits uuid.uuid4() sets, without building a UUID object (4x cheaper).
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    return raw.hex()


def valid_request_id(raw: bytes | None) -> str | None:
    """``raw`` as text when it is 1-128 characters of ``A-Z a-z 0-9 . _ : -``, else None."""
    if raw is None or not _REQUEST_ID.fullmatch(raw):
        return None
    return raw.decode("ascii")


def parse_traceparent(raw: bytes | None) -> tuple[str, str] | None:
    """``(trace_id, span_id)`` from a valid W3C ``traceparent``, else None."""
    if raw is None:
        return None
    match = _TRACEPARENT.fullmatch(raw.strip())
    if match is None:
        return None
    version, trace_id, span_id, _flags, rest = match.groups()
    # Version ff is forbidden; version 00 has nothing after the flags; all-zero ids are invalid.
    if version == b"ff" or (version == b"00" and rest) or not trace_id.strip(b"0"):
        return None
    if not span_id.strip(b"0"):
        return None
    return trace_id.decode("ascii"), span_id.decode("ascii")


# --- the middleware ---------------------------------------------------------------------


class RequestContextMiddleware:
    """Gives every request an id, binds it (and more) to every log line, logs the request.

    The request id is echoed on every response, including the ones inner layers reject or
    crash on. Exactly one access-log event is written per HTTP request, when it ends, also
    when the app raises or the client goes away. ``websocket`` scopes get the id and the
    bound context but no header rewriting or access log; ``lifespan`` passes through.

    This is the outermost layer: it makes the request record (``buttress._request``) that
    every inner layer reads, so the client IP, the path without the root path and the final
    status are decided here once.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        request_id_header: str = "X-Request-ID",
        trusted_proxies: Iterable[IPNetwork | str] | str = (),
        forwarded_header: str = "x-forwarded-for",
        access_log: bool = True,
        access_log_exclude: Iterable[str] | str = ("/metrics",),
        id_generator: Callable[[], str] | None = None,
        id_validator: Callable[[str], bool] | None = None,
        id_in_request: bool = False,
        access_log_fields: Iterable[str] | str = ACCESS_DEFAULT_FIELDS,
        access_log_4xx_level: str = "warning",
    ) -> None:
        from buttress.logs import AccessLogger, LogThrottle

        self.app = app
        header = option("request_id_header", "request_id_header", request_id_header)
        self._header = header.lower().encode("latin-1")
        self._new_id = id_generator or new_request_id
        self._valid = id_validator
        self._id_in_request = option("id_in_request", "request_id_in_request", id_in_request)
        self._replaced = LogThrottle(10.0)
        self._trusted: Sequence[IPNetwork] = option(
            "trusted_proxies", "trusted_proxies", trusted_proxies
        )
        self._forwarded = option("forwarded_header", "forwarded_header", forwarded_header)
        enabled = option("access_log", "access_log", access_log)
        self._access = (
            AccessLogger(
                fields=option("access_log_fields", "access_log_fields", access_log_fields),
                client_error_level=option(
                    "access_log_4xx_level", "access_log_4xx_level", access_log_4xx_level
                ),
            )
            if enabled
            else None
        )
        self._exclude = frozenset(
            option("access_log_exclude", "access_log_exclude", access_log_exclude)
        )
        v = _structlog_vars()
        self._registry = _structlog_registry()
        self._own = frozenset(v.values())
        self._n_own = len(self._own)
        self._v_request_id, self._v_method, self._v_path = v["request_id"], v["method"], v["path"]
        self._v_client_ip, self._v_trace_id, self._v_span_id = (
            v["client_ip"],
            v["trace_id"],
            v["span_id"],
        )

    def _accept(self, raw: bytes) -> str | None:
        """The incoming id when it is safe (and, with ``id_validator``, valid) to keep."""
        request_id = valid_request_id(raw)  # always: it travels in headers and logs
        if request_id is not None and self._valid is not None and not self._valid(request_id):
            return None
        return request_id

    def _warn_replaced(self, raw: bytes, request_id: str) -> None:
        """One warning (throttled: a client could flood it) for an incoming id we replaced."""
        suppressed = self._replaced.allow()
        if suppressed is not None:
            structlog.get_logger("buttress.context").warning(
                "invalid request id replaced",
                header=self._header.decode("latin-1"),
                received=raw[:64].decode("latin-1").encode("unicode_escape").decode("ascii"),
                request_id=request_id,
                suppressed=suppressed,
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        if RECORD_KEY in scope:  # an outer buttress context layer already did the work
            await self.app(scope, receive, send)
            return

        headers = scope.get("headers") or ()
        incoming: bytes | None = None
        traceparent: bytes | None = None
        for key, value in headers:
            if key == self._header:
                incoming = value
            elif key == b"traceparent":
                traceparent = value
        request_id = self._accept(incoming) if incoming is not None else None
        if request_id is None:
            request_id = self._new_id()
            if incoming is not None:
                self._warn_replaced(incoming, request_id)
            if self._id_in_request:
                # The app reads request.headers["x-request-id"] and finds the id we use.
                scope["headers"] = [
                    *(h for h in headers if h[0] != self._header),
                    (self._header, request_id.encode("latin-1")),
                ]
        ip = client_ip(scope, self._trusted, self._forwarded)
        method = scope.get("method", "GET") if kind == "http" else "WEBSOCKET"
        root = scope.get("root_path", "")
        path = app_path(scope) if root else scope.get("path", "")
        record = RequestRecord(request_id, ip, root, path, method)
        scope[RECORD_KEY] = record

        trace = parse_traceparent(traceparent) if traceparent is not None else None
        registry = self._registry
        own = self._n_own
        outer = _unbind_foreign(registry, self._own) if len(registry) > own else None
        t_request = self._v_request_id.set(request_id)
        t_method = self._v_method.set(method)
        t_path = self._v_path.set(scope.get("path", ""))
        t_ip = self._v_client_ip.set(ip)
        t_trace = t_span = None
        if trace is not None:
            record.trace_id, record.span_id = trace
            record.trace_flags = (traceparent or b"").strip()[53:55].decode("ascii")
            t_trace = self._v_trace_id.set(trace[0])
            t_span = self._v_span_id.set(trace[1])
        t_current = _current.set(record)
        try:
            if kind == "websocket":
                await self.app(scope, receive, send)
                return
            responder = RecordingResponder(
                record, send, receive, (self._header, request_id.encode())
            )
            error: BaseException | None = None
            try:
                await self.app(scope, responder.receive, responder.send)
            except BaseException as exc:
                error = exc
                raise
            finally:
                record.final_status(error)
                if self._access is not None and path not in self._exclude:
                    self._access.log(scope, record, error)
        finally:
            _current.reset(t_current)
            if t_span is not None and t_trace is not None:
                self._v_span_id.reset(t_span)
                self._v_trace_id.reset(t_trace)
            self._v_client_ip.reset(t_ip)
            self._v_path.reset(t_path)
            self._v_method.reset(t_method)
            self._v_request_id.reset(t_request)
            if outer is not None or len(registry) > own:
                _rebind_foreign(registry, self._own, outer or {})
