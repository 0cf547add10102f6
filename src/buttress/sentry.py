"""Sentry: errors reported once, with the status and detail the client saw and the request id.

# Strategy: the error layer reports; Sentry's own per-request integrations stay off.
# ``init_sentry`` passes ``auto_enabling_integrations=False``, because sentry-sdk would
# otherwise patch Starlette, FastAPI, Django, Quart and Litestar process-wide and cost about
# 9 µs per request even with nothing to report (and 170+ µs with its ASGI middleware on).
# ``ErrorMiddleware`` already knows every exception that reaches the client, its status and
# its detail, so it captures them itself: nothing runs on a request without an error.
#
# ``before_send`` is the single gate every event passes, whoever captured it (us, a
# framework integration the user enabled, the logging integration, the user):
# - it tags ``request_id`` (and ``trace_id``) from the request context;
# - an HTTP or mapped exception captured by someone else gets ``http_status``,
#   ``status_code`` and ``http_exception_detail``, and is dropped when its status is not
#   in ``BUTTRESS_SENTRY_STATUS_CODES``;
# - an exception object is sent at most once (it is marked), so an error is reported
#   exactly once even when sentry's Starlette/FastAPI integrations also see it;
# - the request is masked and its secrets scrubbed wherever they appear (headers, query,
#   frame locals, extras; see ``buttress._scrub``), IPs too unless ``send_default_pii``
#   is on, then the user's own ``before_send`` runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from buttress._asgi import ASGIApp, Message, Receive, Scope, Send, get_header
from buttress._exceptions import ExceptionMap, exception_status, normalize_map
from buttress._request import REQUEST_BODY_KEY, RequestRecord, app_path, record_of
from buttress._scrub import mask_request, normal_names, request_secrets
from buttress._scrub import scrub as _scrub
from buttress.config import option

__all__ = ["BeforeSend", "init_sentry", "report_exception"]

_MARK = "__buttress_sentry_reported__"

Event = dict[str, Any]
Hint = dict[str, Any]
BeforeSendFn = Callable[[Event, Hint], "Event | None"]


def init_sentry(
    *,
    dsn: str | None = None,
    status_codes: Any = range(500, 600),
    exception_map: ExceptionMap | None = None,
    traces_sample_rate: float = 0.0,
    secret_headers: Any = (),
    **options: Any,
) -> bool:
    """Start Sentry when ``dsn`` is given (``wrap()`` passes ``SENTRY_DSN``); True when reporting.

    ``status_codes`` are the statuses reported (``BUTTRESS_SENTRY_STATUS_CODES``);
    ``exception_map`` describes exceptions others capture, as the error layer answers them.
    ``secret_headers`` are more header names to hide (``wrap()`` passes the rate-limit key
    header of ``BUTTRESS_RATE_LIMIT_KEY=header:<Name>``). ``SENTRY_ENVIRONMENT`` and ``SENTRY_RELEASE`` are read by sentry-sdk itself. Other
    ``options`` go to ``sentry_sdk.init``; a ``before_send`` given here runs after ours.
    When the app already initialised Sentry itself (and no DSN is given here), its client
    is kept and buttress's ``before_send`` is put in front of the app's own.
    """
    import sentry_sdk

    statuses = option("status_codes", "sentry_status_codes", status_codes)
    mapping = normalize_map(option("exception_map", "exception_map", exception_map or {}))
    rate = option("traces_sample_rate", "sentry_traces_sample_rate", traces_sample_rate)
    client = sentry_sdk.get_client()
    current = client.options.get("before_send") if client.is_active() else None
    if client.is_active() and not isinstance(current, BeforeSend):
        # The app set Sentry up itself: keep its client, put our gate in front of its own.
        client.options["before_send"] = BeforeSend(statuses, mapping, current, secret_headers)
        return True
    if not dsn:
        return client.is_active()
    kwargs: dict[str, Any] = {
        # send_default_pii is left unset (false): setting it is deprecated in sentry-sdk 2.75,
        # and passing data_collection instead would switch off its EventScrubber.
        "dsn": dsn,
        "auto_enabling_integrations": False,
        "traces_sample_rate": rate if rate > 0 else None,
    }
    user_before_send = options.pop("before_send", None)
    kwargs.update(options)
    kwargs["before_send"] = BeforeSend(statuses, mapping, user_before_send, secret_headers)
    sentry_sdk.init(**kwargs)
    return True


def client_active() -> bool:
    """True when a Sentry client with a DSN is initialised."""
    import sentry_sdk

    return bool(sentry_sdk.get_client().is_active())


def tracing_enabled() -> bool:
    """True when the active Sentry client samples transactions."""
    import sentry_sdk

    client = sentry_sdk.get_client()
    rate = client.options.get("traces_sample_rate") if client.is_active() else None
    return bool(rate) or (client.is_active() and client.options.get("traces_sampler") is not None)


class BeforeSend:
    """Sentry's ``before_send``: tags, HTTP details, once-only and scrubbing, then the user's."""

    def __init__(
        self,
        statuses: Any,
        exception_map: Mapping[type, tuple[int, Any]],
        user: BeforeSendFn | None = None,
        secret_headers: Any = (),
    ) -> None:
        self.user = user
        self.secret_headers = normal_names(secret_headers)
        self.exception_map = exception_map
        self.statuses = frozenset(statuses)

    def __call__(self, event: Event, hint: Hint) -> Event | None:
        from buttress.context import get_request_id, get_trace_id

        tags = event.get("tags")
        if not isinstance(tags, dict):
            tags = event["tags"] = {}
        exc_info = hint.get("exc_info")
        exc = exc_info[1] if exc_info else None
        if isinstance(exc, BaseException):
            if getattr(exc, _MARK, False):
                return None
            _mark(exc)
            if "http_status" not in tags and not self._describe(event, tags, exc):
                return None
        request_id = get_request_id()
        if request_id is not None:
            tags.setdefault("request_id", request_id)
        trace_id = get_trace_id()
        if trace_id is not None:
            tags.setdefault("trace_id", trace_id)
        self._scrub(event, hint)
        if self.user is not None:
            return self.user(event, hint)
        return event

    def _scrub(self, event: Event, hint: Hint) -> None:
        pii = pii_allowed()
        found: set[str] = set()
        scope = hint.get("buttress_scope")
        if isinstance(scope, dict):
            found = request_secrets(scope, pii, self.secret_headers)
        request = event.get("request")
        if isinstance(request, dict):
            mask_request(request, pii, self.secret_headers, found)
        _scrub(event, found, pii, self.secret_headers)

    def _describe(self, event: Event, tags: dict[str, Any], exc: BaseException) -> bool:
        """Add the HTTP status and detail of an exception someone else captured."""
        from buttress.context import get_request_id

        known = exception_status(exc, self.exception_map)
        if known is None:
            # An unhandled exception a framework integration caught during a request: the
            # error layer answers it with a 500.
            if not (_unhandled(event) and get_request_id() is not None):
                return True
            status, detail = 500, None
        else:
            status, detail, _ = known
        if status not in self.statuses:
            return False
        tags["http_status"] = status
        extra = event.get("extra")
        if not isinstance(extra, dict):
            extra = event["extra"] = {}
        extra["status_code"] = status
        if detail is not None:
            extra["http_exception_detail"] = detail
        return True


def _unhandled(event: Event) -> bool:
    values = (event.get("exception") or {}).get("values") or []
    return any((v.get("mechanism") or {}).get("handled") is False for v in values)


def _mark(exc: BaseException) -> None:
    # An exception type with __slots__ cannot be marked; sentry's dedupe still applies.
    with contextlib.suppress(AttributeError, TypeError):
        setattr(exc, _MARK, True)


def report_exception(
    exc: BaseException, scope: Scope, status: int, detail: Any, *, suppressed: int = 0
) -> None:
    """Capture ``exc`` for the request in ``scope``, answered with ``status`` and ``detail``.

    ``suppressed`` is how many reports of the same error the budget held back since the
    last one. With tracing off, the request's incoming ``sentry-trace`` or W3C
    ``traceparent`` is continued on a fork of its isolation scope, so the event links to
    the upstream trace; requests without an error never pay for it.
    """
    import sentry_sdk
    from sentry_sdk.utils import event_from_exception

    from buttress._routes import UNMATCHED, resolve_route

    client = sentry_sdk.get_client()
    if not client.is_active():
        return
    info = record_of(scope)
    route = resolve_route(scope, info)
    event, hint = event_from_exception(
        exc, client_options=client.options, mechanism={"type": "buttress", "handled": False}
    )
    hint["buttress_scope"] = scope
    tags: dict[str, Any] = {"http_status": status}
    if info is not None:
        tags["request_id"] = info.request_id
        if info.trace_id:
            tags["trace_id"] = info.trace_id
    event["tags"] = tags
    extra: dict[str, Any] = {"status_code": status}
    if detail is not None:
        extra["http_exception_detail"] = detail
    if suppressed:
        extra["suppressed_since_last_report"] = suppressed
    event["extra"] = extra
    event["request"] = _request_data(scope, info)
    # A 404's raw URL would make one transaction name per scanned path: bounded instead.
    event["transaction"] = route or UNMATCHED
    event["transaction_info"] = {"source": "route"}
    event["level"] = "error"
    incoming = incoming_trace(scope)
    if incoming and not tracing_enabled():
        with sentry_sdk.isolation_scope() as isolation:
            isolation.generate_propagation_context(incoming)
            sentry_sdk.capture_event(event, hint=hint)
        return
    sentry_sdk.capture_event(event, hint=hint)


def incoming_trace(scope: Scope) -> dict[str, str]:
    """The trace headers Sentry continues: ``sentry-trace`` (and ``baggage``) as sent, or a
    valid W3C ``traceparent`` as ``sentry-trace`` (sentry-sdk reads only its own header).

    The sampled flag is left out, so a W3C ``01`` never forces sampling here.
    """
    from buttress.context import parse_traceparent

    found: dict[str, str] = {}
    traceparent = None
    for key, value in scope.get("headers") or ():
        if key in (b"sentry-trace", b"baggage"):
            found[key.decode("latin-1")] = value.decode("latin-1")
        elif key == b"traceparent":
            traceparent = value
    if "sentry-trace" not in found:
        found.pop("baggage", None)
        parsed = parse_traceparent(traceparent) if traceparent is not None else None
        if parsed is not None:
            found["sentry-trace"] = f"{parsed[0]}-{parsed[1]}"
    return found


def _request_data(scope: Scope, info: RequestRecord | None) -> dict[str, Any]:
    """The request as sent to Sentry; ``BeforeSend`` masks it (see ``buttress._scrub``)."""
    headers: dict[str, str] = {}
    host = ""
    for key, value in scope.get("headers") or ():
        name = key.decode("latin-1").lower()
        text = value.decode("latin-1")
        if name == "host":
            host = text
        headers[name] = f"{headers[name]}, {text}" if name in headers else text
    server = scope.get("server")
    if not host and server:
        host = f"{server[0]}:{server[1]}"
    path = scope.get("root_path", "") + app_path(scope)
    data: dict[str, Any] = {
        "method": scope.get("method"),
        "url": f"{scope.get('scheme', 'http')}://{host}{path}",
        "query_string": scope.get("query_string", b"").decode("latin-1"),
        "headers": headers,
    }
    if info is not None and info.client_ip:
        data["env"] = {"REMOTE_ADDR": str(info.client_ip)}  # dropped unless PII is allowed
    body = scope.get(REQUEST_BODY_KEY)
    if body:
        try:
            data["data"] = orjson.loads(body)  # masked by key in BeforeSend, like headers
        except orjson.JSONDecodeError:
            data["data"] = "[unparsable JSON body]"
    return data


def pii_allowed() -> bool:
    """Whether the Sentry client may send personal data (IPs): ``send_default_pii``, or
    ``data_collection={"user_info": True}`` given by the user (sentry-sdk 2.75+)."""
    import sentry_sdk

    client = sentry_sdk.get_client()
    if client.should_send_default_pii():
        return True
    collection = client.options.get("data_collection")
    if isinstance(collection, Mapping) and collection.get("provided_by_user"):
        return bool(collection.get("user_info"))
    return False


def scrub(event: Event, known: Any = (), secret_headers: Any = ()) -> None:
    """Hide every secret of ``event`` in place, as ``BeforeSend`` does (PII by the client)."""
    pii = pii_allowed()
    names = normal_names(secret_headers)
    found = set(known)
    request = event.get("request")
    if isinstance(request, dict):
        mask_request(request, pii, names, found)
    _scrub(event, found, pii, names)


class RequestScopes:
    """Gives each request its own Sentry isolation scope (``enter`` / ``leave``).

    # Strategy: breadcrumbs, tags and users set while serving one request live on Sentry's
    # isolation scope and must not reach another request's event. ``isolation_scope()``
    # forks both the current and the isolation scope through a generator context manager
    # (about 4x the cost); forking just the isolation scope into its ContextVar is what
    # isolates that data. The ContextVar is sentry-sdk's private ``_isolation_scope``:
    # tests/test_sentry.py checks that tags and breadcrumbs stay per request with the
    # installed sentry-sdk, and this constructor refuses to start if the variable moved,
    # so an upgrade that changes it fails loudly, never silently.
    #
    # The request is also marked as handled by an ASGI integration (sentry-sdk's private
    # ``_asgi_middleware_applied``), so the ``SentryAsgiMiddleware`` that sentry's
    # Starlette/FastAPI/Django/Quart/Litestar integrations insert when the app calls
    # ``sentry_sdk.init`` itself passes through: one request, one transaction, one scope.
    """

    def __init__(self) -> None:
        from contextvars import ContextVar

        from sentry_sdk import scope as sentry_scope

        var = getattr(sentry_scope, "_isolation_scope", None)
        if not isinstance(var, ContextVar):
            raise RuntimeError(
                "sentry_sdk.scope._isolation_scope is no longer a ContextVar; this "
                "sentry-sdk version needs a buttress update (per-request Sentry scopes)."
            )
        self._var: ContextVar[Any] = var
        self._applied = asgi_applied()
        self._current = sentry_scope.Scope.get_isolation_scope

    def enter(self) -> Any:
        return self._var.set(self._current().fork()), self._applied.set(True)

    def leave(self, tokens: Any) -> None:
        self._applied.reset(tokens[1])
        self._var.reset(tokens[0])


def asgi_applied() -> Any:
    """sentry-sdk's private marker of a request already inside its ASGI middleware."""
    from contextvars import ContextVar

    from sentry_sdk.integrations import asgi

    var = getattr(asgi, "_asgi_middleware_applied", None)
    if not isinstance(var, ContextVar):
        raise RuntimeError(
            "sentry_sdk.integrations.asgi._asgi_middleware_applied is no longer a "
            "ContextVar; this sentry-sdk version needs a buttress update (one transaction "
            "per request when the app initialises Sentry itself)."
        )
    return var


async def run_traced(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    """Run one request inside a Sentry transaction named by its route template.

    The transaction continues the request's ``sentry-trace`` or W3C ``traceparent``.
    """
    import sentry_sdk

    from buttress._routes import UNMATCHED, resolve_route

    info: RequestRecord | None = record_of(scope)
    status = 0

    async def send_status(message: Any) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        await send(message)

    applied = asgi_applied()
    with sentry_sdk.isolation_scope():
        token = applied.set(True)
        transaction = sentry_sdk.continue_trace(
            incoming_trace(scope), op="http.server", name=scope.get("path", ""), source="url"
        )
        if hasattr(transaction, "origin"):  # spans have no origin in sentry-sdk 2.0.0
            transaction.origin = "auto.http.buttress"
        try:
            with sentry_sdk.start_transaction(transaction):
                try:
                    await app(scope, receive, send_status)
                finally:
                    route = resolve_route(scope, info) or UNMATCHED  # never the raw URL
                    transaction.name = route
                    transaction.source = "route"
                    current = sentry_sdk.Scope.get_current_scope()
                    current.set_transaction_name(route, source="route")
                    transaction.set_http_status(status or 500)
        finally:
            applied.reset(token)


def keep_json_body(scope: Scope, receive: Receive, limit: int) -> Receive:
    """``receive`` that keeps a JSON request body (up to ``limit`` bytes) for Sentry.

    Off by default (``BUTTRESS_SENTRY_REQUEST_BODIES=0``), as sentry-sdk's own
    ``max_request_body_size``: a body can hold personal data; keys that name a credential
    are filtered before the event leaves, like headers. A larger body is not attached.
    """
    content_type = get_header(scope.get("headers") or (), b"content-type") or b""
    if b"json" not in content_type.lower():
        return receive
    chunks: list[bytes] = []
    size = 0

    async def keeping() -> Message:
        nonlocal size
        message = await receive()
        if message["type"] == "http.request" and size <= limit:
            body = message.get("body", b"")
            size += len(body)
            if size <= limit:
                chunks.append(body)
                if not message.get("more_body", False):
                    scope[REQUEST_BODY_KEY] = b"".join(chunks)
        return message

    return keeping
