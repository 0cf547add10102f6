"""The error contract: every error response is JSON ``{"detail": ...}``, whatever made it.

API clients read one key on every failure, so this layer turns exceptions and the error
pages of every framework (Starlette's plain text, Django's and Quart's HTML, an empty
body) into ``{"detail": ...}`` (or RFC 9457 ``application/problem+json``), logs the
unhandled ones once and reports them to Sentry once.

# Strategy: only error responses are held. A 1xx-3xx response start is forwarded at once
# and its body flows chunk by chunk, so streaming and the happy path cost one comparison
# per message. A 4xx/5xx is held until its body is complete (up to ``error_body_limit``
# bytes; past it, the held part is flushed and the rest flows unchanged), then normalized.
# A complete 4xx is sent at once, so background tasks never delay it. A complete 5xx is
# held until the app returns, because a framework may send its own 500 page and *then*
# re-raise (Starlette's ServerErrorMiddleware does exactly that): the client has seen
# nothing yet, so the page is dropped and the exception answered by the contract. When a
# framework swallowed the exception into its 500 page and left it in
# ``scope["buttress.exception"]`` (Django, Quart, Litestar, see ``adapters``), the held
# page is answered as that exception: logged once, mapped, reported once.
#
# An exception before the response started becomes the contract's response and is NOT
# re-raised: the server would log the same traceback a second time. After the response
# started it is logged, reported and re-raised, so the server aborts the connection; a
# second ``http.response.start`` is never sent. A re-raised exception is marked, so the
# server's own "Exception in ASGI application" traceback of it is dropped (see ``logs``).
#
# A ``send`` that raises ``OSError`` means the client went away (ASGI spec 2.4). Whatever
# the app turns it into, it is re-raised to the server as it is, with one info line and
# no traceback, no Sentry event and no attempt to answer a client that is gone.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import orjson
import structlog

from buttress._asgi import ASGIApp, Headers, Message, Receive, Scope, Send, reason
from buttress._budget import ReportGate
from buttress._errorbody import content_length, error_body, text_detail
from buttress._exceptions import (
    INTERNAL_ERROR_DETAIL,
    ExceptionMap,
    exception_status,
    normalize_map,
)
from buttress._request import EXCEPTION_KEY, app_path, record_of
from buttress._scrub import LOG_SECRETS, RequestSecrets, normal_names, warm
from buttress.config import option
from buttress.logs import LogThrottle, mark_logged

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from buttress.sentry import RequestScopes

__all__ = ["INTERNAL_ERROR_DETAIL", "ErrorMiddleware", "exception_status"]

_JSON = b"application/json"
_PROBLEM = b"application/problem+json"
# Headers recomputed by this layer; everything else the app set (Allow, WWW-Authenticate,
# Retry-After, Set-Cookie, ...) is kept.
_REPLACED = frozenset({b"content-type", b"content-length", b"transfer-encoding"})

# Response-message modes of one request.
_PASS = 0  # forwarding as received (no response yet, a 1xx-3xx, or an error too big to hold)
_HOLD = 1  # holding an error response until its body is complete
_DONE = 2  # the error response is complete: sent (4xx) or kept until the app returns (5xx)


class ErrorMiddleware:
    """Answers every error as ``{"detail": ...}``; logs and reports unhandled exceptions once.

    ``exception_map`` maps exception classes (subclasses match) to a status, or to
    ``(status, detail)`` where detail is text or a callable of the exception; a bare status
    answers with its reason phrase, never ``str(exc)`` (see ``buttress._exceptions``).
    ``error_format`` is ``"detail"`` or ``"problem"`` (RFC 9457); ``body_limit`` is the
    largest error body (bytes) held to be normalized; ``report_statuses`` are the statuses
    reported to Sentry. ``report_budget`` is how many reports (a Sentry event and a
    traceback log line) one error (exception type and route) may cost per minute, 0 for no
    limit; what it holds back is counted in ``sentry_reports_dropped_total{reason}`` of
    ``registry``. ``secret_headers`` are more header names whose values never reach a log
    line. ``passthrough_json`` sends error bodies that are already JSON unchanged.
    ``websocket`` and ``lifespan`` scopes pass through untouched.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        exception_map: ExceptionMap | str | None = None,
        error_format: str = "detail",
        body_limit: int = 65536,
        report_statuses: Iterable[int] | str = range(500, 600),
        report_budget: int = 10,
        registry: CollectorRegistry | None = None,
        namespace: str = "",
        secret_headers: Iterable[str] = (),
        passthrough_json: bool = False,
        request_bodies: int = 0,
    ) -> None:
        self.app = app
        parsed = option("exception_map", "exception_map", exception_map or {})
        self.exception_map = normalize_map(parsed)
        fmt = option("error_format", "error_format", error_format)
        self._problem = fmt == "problem"
        self._content_type = _PROBLEM if self._problem else _JSON
        self._limit: int = option("body_limit", "error_body_limit", body_limit)
        self._report_statuses = option("report_statuses", "sentry_status_codes", report_statuses)
        budget = option("report_budget", "error_report_budget", report_budget)
        self._gate = ReportGate(budget, registry, namespace)
        self._secret_headers = normal_names(secret_headers)
        self._passthrough_json = option(
            "passthrough_json", "error_passthrough_json", passthrough_json
        )
        self._bodies = option("request_bodies", "sentry_request_bodies", request_bodies)
        warm()
        self._log = structlog.get_logger("buttress.errors")
        self._too_big = LogThrottle(60.0)
        from buttress.sentry import RequestScopes, client_active, tracing_enabled

        # Sentry transactions only when the app turned tracing on (init_sentry runs first).
        live = "sentry_sdk" in sys.modules
        self._traced = live and tracing_enabled()
        # Without tracing, each request still gets its own Sentry scope, or breadcrumbs,
        # tags and users set while serving one request would end up on another's event.
        self._scopes: RequestScopes | None = None
        if live and not self._traced and client_active():
            self._scopes = RequestScopes()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        secrets = LOG_SECRETS.set(RequestSecrets(scope, self._secret_headers))
        try:
            if self._traced:
                from buttress.sentry import run_traced

                await run_traced(self._handle, scope, receive, send)
            elif self._scopes is not None:
                token = self._scopes.enter()
                try:
                    await self._handle(scope, receive, send)
                finally:
                    self._scopes.leave(token)
            else:
                await self._handle(scope, receive, send)
        finally:
            LOG_SECRETS.reset(secrets)

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._bodies and (self._scopes is not None or self._traced):
            from buttress.sentry import keep_json_body

            receive = keep_json_body(scope, receive, self._bodies)
        responder = _Responder(self, scope, send)
        try:
            await self.app(scope, receive, responder.send)
        except Exception as exc:
            if responder.gone is not None:
                # The client went away (the app may have turned the OSError into its own
                # exception, like Starlette's ClientDisconnect). Not a server error: no
                # traceback, no Sentry event, no 500 to nobody; the server gets it back.
                self._log_gone(responder.gone)
                mark_logged(exc)
                raise
            if responder.answered is not None:
                # Our answer to an exception the framework handed over is out; this one
                # came after it (Starlette re-raises, or its handler for it failed).
                if exc is not responder.answered:
                    self._answer_late(scope, exc)
                mark_logged(exc)
                return
            if responder.started:
                held = self._admit(scope, exc)
                if held is not None:
                    self._log_exception(exc, started=True, suppressed=held)
                    self._report(scope, exc, 500, None, held)
                mark_logged(exc)  # the server's own traceback of it would be a duplicate
                raise
            await self._answer_exception(scope, send, exc)
            return
        if responder.pending is not None or responder.mode == _HOLD:
            await responder.finish()

    # --- exceptions ---------------------------------------------------------------------

    async def _answer_exception(self, scope: Scope, send: Send, exc: Exception) -> None:
        known = exception_status(exc, self.exception_map)
        headers: Headers
        if known is None:
            status, detail, headers = 500, INTERNAL_ERROR_DETAIL, []
            held = self._admit(scope, exc)
            if held is not None:
                self._log_exception(exc, started=False, suppressed=held)
                self._report(scope, exc, 500, None, held)
        else:
            status, detail, headers = known
            if status in self._report_statuses:
                held = self._admit(scope, exc)
                if held is not None:
                    self._report(scope, exc, status, detail, held)
        start, body = self._response(scope, status, detail, headers)
        await send(start)
        await send(body)

    def _answer_late(self, scope: Scope, exc: Exception) -> None:
        held = self._admit(scope, exc)
        if held is not None:
            self._log_exception(exc, started=False, suppressed=held)
            self._report(scope, exc, 500, None, held)

    def _report_answered(self, scope: Scope, exc: Exception, status: int) -> None:
        """Report an exception the framework itself answered with a 4xx, when configured."""
        if status in self._report_statuses:
            held = self._admit(scope, exc)
            if held is not None:
                known = exception_status(exc, self.exception_map)
                self._report(scope, exc, status, known[1] if known is not None else None, held)

    def _admit(self, scope: Scope, exc: BaseException) -> int | None:
        """How many reports of this error were held back before this one; None: hold it."""
        from buttress._routes import resolve_route

        return self._gate.admit(exc, lambda: resolve_route(scope, record_of(scope)))

    def _log_gone(self, error: OSError) -> None:
        self._log.info(
            "client disconnected while the response was sent",
            error=f"{type(error).__name__}: {error}",
        )

    def _log_exception(self, exc: BaseException, *, started: bool, suppressed: int) -> None:
        more = {"suppressed": suppressed} if suppressed else {}
        if started:
            self._log.error("unhandled exception after the response started", exc_info=exc, **more)
        else:
            self._log.error("unhandled exception", exc_info=exc, status=500, **more)

    def _report(
        self, scope: Scope, exc: BaseException, status: int, detail: Any, suppressed: int
    ) -> None:
        if status in self._report_statuses:
            from buttress.sentry import report_exception

            report_exception(exc, scope, status, detail, suppressed=suppressed)

    # --- normalizing error responses ----------------------------------------------------

    def _normalize(self, scope: Scope, start: Message, body: bytes) -> tuple[Message, Message]:
        """The contract's version of a complete error response the app produced."""
        status: int = start["status"]
        raw_headers: Headers = list(start.get("headers") or ())
        content_type = b""
        encoded = False
        for key, value in raw_headers:
            name = key.lower()
            if name == b"content-type":
                content_type = value.lower()
            elif name == b"content-encoding" and value.strip().lower() != b"identity":
                encoded = True
        if encoded:  # compressed by an inner layer: it is not ours to read
            return start, {"type": "http.response.body", "body": body}
        detail: Any = None
        has_detail = False
        if b"json" in content_type and body:
            try:
                parsed = orjson.loads(body)
            except orjson.JSONDecodeError:
                parsed = None
            else:
                if self._passthrough_json:  # the app's own JSON error contract
                    return self._passthrough(scope, start, raw_headers, body)
                if isinstance(parsed, dict) and "detail" in parsed:
                    has_detail = True
                    detail = parsed["detail"]
                    if not self._problem or content_type.startswith(_PROBLEM):
                        return self._passthrough(scope, start, raw_headers, body)
                elif parsed is not None:
                    detail = parsed
                    has_detail = True
        if not has_detail:
            detail = text_detail(content_type, body) or reason(status)
        headers = [h for h in raw_headers if h[0].lower() not in _REPLACED]
        return self._response(scope, status, detail, headers)

    def _passthrough(
        self, scope: Scope, start: Message, headers: Headers, body: bytes
    ) -> tuple[Message, Message]:
        if scope.get("method") == "HEAD" and not body:
            return start, {"type": "http.response.body", "body": b""}
        out = [h for h in headers if h[0].lower() != b"content-length"]
        out.append((b"content-length", str(len(body)).encode("ascii")))
        if scope.get("method") == "HEAD":
            body = b""
        return {**start, "headers": out}, {"type": "http.response.body", "body": body}

    def _response(
        self, scope: Scope, status: int, detail: Any, headers: Iterable[tuple[bytes, bytes]]
    ) -> tuple[Message, Message]:
        instance = scope.get("root_path", "") + app_path(scope)
        body = error_body(status, detail, self._problem, instance)
        out: Headers = [
            (b"content-type", self._content_type),
            (b"content-length", str(len(body)).encode("ascii")),
        ]
        out.extend(h for h in headers if h[0].lower() not in _REPLACED)
        start: Message = {"type": "http.response.start", "status": status, "headers": out}
        if scope.get("method") == "HEAD":
            body = b""
        return start, {"type": "http.response.body", "body": body}

    def _warn_too_big(self, scope: Scope, status: int, size: int) -> None:
        suppressed = self._too_big.allow()
        if suppressed is not None:
            self._log.warning(
                "error response too large to normalize; sent unchanged",
                status=status,
                size=size,
                limit=self._limit,
                path=app_path(scope),
                suppressed=suppressed,
            )


class _Responder:
    """The error layer's view of one response (state of one request, never on the layer).

    See the module's strategy: only error responses are held, a complete 5xx waits for the
    app to return unless the framework handed its exception over.
    """

    __slots__ = (
        "_send",
        "answered",
        "gone",
        "held",
        "held_size",
        "layer",
        "mode",
        "pending",
        "scope",
        "start",
        "started",
    )

    def __init__(self, layer: ErrorMiddleware, scope: Scope, send: Send) -> None:
        self.layer = layer
        self.scope = scope
        self._send = send
        self.mode = _PASS
        self.started = False  # a response start reached the client
        self.start: Message | None = None  # the held error response start
        self.held: list[bytes] = []
        self.held_size = 0
        self.pending: tuple[Message, Message] | None = None  # a complete 5xx, sent on return
        self.gone: OSError | None = None  # what the server's send raised, if it did
        self.answered: Exception | None = None  # the handed-over exception we answered

    async def send(self, message: Message) -> None:
        try:
            if self.mode == _PASS:
                # A body passes straight on: one call less on every request.
                if message["type"] == "http.response.body":
                    await self._send(message)
                    return
                await self._pass(message)
            elif self.mode == _HOLD and message["type"] == "http.response.body":
                await self._hold(message)
            else:
                if self.mode == _HOLD:  # pathsend, zero-copy and the like: not ours to hold
                    assert self.start is not None
                    self.mode = _PASS
                    self.started = True
                    await self._send(self.start)
                await self._send(message)
        except OSError as exc:
            self.gone = exc  # the server could not deliver it: the client went away
            raise

    async def _pass(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            status = message["status"]
            if status >= 400 and not message.get("trailers"):
                length = content_length(message.get("headers"))
                if length is None or length <= self.layer._limit or self._handed_over(status):
                    self.mode = _HOLD
                    self.start = message
                    return
                self.layer._warn_too_big(self.scope, status, length)
            self.started = True
        await self._send(message)

    async def _hold(self, message: Message) -> None:
        start = self.start
        assert start is not None
        layer = self.layer
        body = message.get("body", b"")
        self.held.append(body)
        self.held_size += len(body)
        if message.get("more_body", False):
            if self._handed_over(start["status"]):  # its page is dropped, however long
                self.held, self.held_size = [], 0
            elif self.held_size > layer._limit:
                layer._warn_too_big(self.scope, start["status"], self.held_size)
                self.mode = _PASS
                self.started = True
                await self._send(start)
                await self._send({**message, "body": b"".join(self.held)})
            return
        self.mode = _DONE
        swallowed = self.scope.get(EXCEPTION_KEY)
        if start["status"] >= 500 and isinstance(swallowed, Exception):  # handed over
            self.started = True
            self.answered = swallowed
            await layer._answer_exception(self.scope, self._send, swallowed)
            return
        response = layer._normalize(self.scope, start, b"".join(self.held))
        if start["status"] < 500:
            self.started = True
            if isinstance(swallowed, Exception):  # an HTTP exception it answered
                layer._report_answered(self.scope, swallowed, start["status"])
            await self._send(response[0])
            await self._send(response[1])
            return
        self.pending = response

    def _handed_over(self, status: int) -> bool:
        """A 5xx page for an exception the framework handed over: answered as that exception."""
        return status >= 500 and isinstance(self.scope.get(EXCEPTION_KEY), Exception)

    async def finish(self) -> None:
        """The app returned: send a held 5xx, or what a half-sent error response had."""
        if self.pending is not None:
            await self._send(self.pending[0])
            await self._send(self.pending[1])
        elif self.mode == _HOLD and self.start is not None:
            # The app returned mid-body: send what it sent rather than nothing.
            await self._send(self.start)
            await self._send({"type": "http.response.body", "body": b"".join(self.held)})
