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
# - ``Authorization`` and ``Cookie`` values are scrubbed wherever they appear (headers,
#   frame locals, extras), then the user's own ``before_send`` runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any

from buttress._asgi import ASGIApp, Receive, Scope, Send
from buttress._exceptions import ExceptionMap, exception_status, normalize_map
from buttress._request import RequestRecord, app_path, record_of
from buttress.config import option

__all__ = ["BeforeSend", "init_sentry", "report_exception"]

_MARK = "__buttress_sentry_reported__"
_FILTERED = "[Filtered]"
_SENSITIVE = ("authorization", "cookie")
_MIN_SECRET = 4

Event = dict[str, Any]
Hint = dict[str, Any]
BeforeSendFn = Callable[[Event, Hint], "Event | None"]


def init_sentry(
    *,
    dsn: str | None = None,
    status_codes: Any = range(500, 600),
    exception_map: ExceptionMap | None = None,
    traces_sample_rate: float = 0.0,
    **options: Any,
) -> bool:
    """Start Sentry when ``dsn`` is given (``wrap()`` passes ``SENTRY_DSN``); True when reporting.

    ``status_codes`` are the statuses reported (``BUTTRESS_SENTRY_STATUS_CODES``);
    ``exception_map`` describes exceptions others capture, as the error layer answers them.
    ``SENTRY_ENVIRONMENT`` and ``SENTRY_RELEASE`` are read by sentry-sdk itself. Other
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
        client.options["before_send"] = BeforeSend(statuses, mapping, current)
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
    kwargs["before_send"] = BeforeSend(statuses, mapping, user_before_send)
    sentry_sdk.init(**kwargs)
    return True


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
    ) -> None:
        self.user = user
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
        scrub(event, hint.get("buttress_secrets", ()))
        if self.user is not None:
            return self.user(event, hint)
        return event

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


def report_exception(exc: BaseException, scope: Scope, status: int, detail: Any) -> None:
    """Capture ``exc`` for the request in ``scope``, answered with ``status`` and ``detail``."""
    import sentry_sdk
    from sentry_sdk.utils import event_from_exception

    from buttress._routes import resolve_route

    client = sentry_sdk.get_client()
    if not client.is_active():
        return
    info = record_of(scope)
    route = resolve_route(scope, info)
    event, hint = event_from_exception(
        exc, client_options=client.options, mechanism={"type": "buttress", "handled": False}
    )
    hint["buttress_secrets"] = _request_secrets(scope)
    tags: dict[str, Any] = {"http_status": status}
    if info is not None:
        tags["request_id"] = info.request_id
        if info.trace_id:
            tags["trace_id"] = info.trace_id
    event["tags"] = tags
    extra: dict[str, Any] = {"status_code": status}
    if detail is not None:
        extra["http_exception_detail"] = detail
    event["extra"] = extra
    event["request"] = _request_data(scope)
    event["transaction"] = route or scope.get("path", "")
    event["transaction_info"] = {"source": "route" if route else "url"}
    event["level"] = "error"
    sentry_sdk.capture_event(event, hint=hint)


def _request_data(scope: Scope) -> dict[str, Any]:
    headers: dict[str, str] = {}
    host = ""
    for key, value in scope.get("headers") or ():
        name = key.decode("latin-1").lower()
        text = value.decode("latin-1")
        if name == "host":
            host = text
        headers[name] = _FILTERED if _is_sensitive(name) else text
    server = scope.get("server")
    if not host and server:
        host = f"{server[0]}:{server[1]}"
    path = scope.get("root_path", "") + app_path(scope)
    return {
        "method": scope.get("method"),
        "url": f"{scope.get('scheme', 'http')}://{host}{path}",
        "query_string": scope.get("query_string", b"").decode("latin-1"),
        "headers": headers,
    }


def _request_secrets(scope: Scope) -> list[str]:
    found: set[str] = set()
    for key, value in scope.get("headers") or ():
        if _is_sensitive(key.decode("latin-1")):
            _add_secret(found, value.decode("latin-1"))
    return sorted(found)


def _is_sensitive(name: str) -> bool:
    low = name.lower()
    return any(word in low for word in _SENSITIVE)


def _add_secret(found: set[str], value: str) -> None:
    """A header value, and its parts: the token after ``Bearer``, each cookie's value."""
    value = value.strip()
    if not value or value == _FILTERED:
        return
    found.add(value)
    _scheme, _, token = value.partition(" ")
    if token.strip():
        found.add(token.strip())
    for part in value.split(";"):
        _name, eq, cookie = part.partition("=")
        if eq and cookie.strip():
            found.add(cookie.strip())


def _unrepr(text: str) -> str:
    """``"b'abc'"`` (how Sentry serializes bytes) as ``"abc"``."""
    if len(text) >= 3 and text[0] == "b" and text[1] in "'\"" and text[-1] == text[1]:
        return text[2:-1]
    return text


def scrub(event: Event, known: Any = ()) -> None:
    """Replace ``Authorization`` and ``Cookie`` values wherever they appear in ``event``.

    Values are found under sensitive keys (``authorization``, ``HTTP_COOKIE``...) and in
    ``(name, value)`` header pairs such as an ASGI scope's headers in frame locals; every
    string containing one of them, anywhere in the event, is then filtered.
    """
    found: set[str] = set()
    for value in known:
        _add_secret(found, value)
    _harvest(event, found, 0)
    secrets = sorted((s for s in found if len(s) >= _MIN_SECRET), key=len, reverse=True)
    _replace(event, secrets, 0)


def _harvest(obj: Any, found: set[str], depth: int) -> None:
    if depth > 20:
        return
    if isinstance(obj, dict):
        for key, value in obj.items():
            if isinstance(key, str) and _is_sensitive(key):
                if isinstance(value, str):
                    _add_secret(found, _unrepr(value))
                obj[key] = _FILTERED
            else:
                _harvest(value, found, depth + 1)
    elif isinstance(obj, (list, tuple)):
        if (
            len(obj) == 2
            and isinstance(obj[0], str)
            and isinstance(obj[1], str)
            and _is_sensitive(_unrepr(obj[0]))
        ):
            _add_secret(found, _unrepr(obj[1]))
            return
        for item in obj:
            _harvest(item, found, depth + 1)


def _replace(obj: Any, secrets: list[str], depth: int) -> Any:
    if depth > 20:
        return obj
    if isinstance(obj, str):
        for secret in secrets:
            if secret in obj:
                obj = obj.replace(secret, _FILTERED)
        return obj
    if isinstance(obj, dict):
        for key, value in obj.items():
            obj[key] = _replace(value, secrets, depth + 1)
    elif isinstance(obj, list):
        for i, item in enumerate(obj):
            obj[i] = _replace(item, secrets, depth + 1)
    elif isinstance(obj, tuple):
        return tuple(_replace(item, secrets, depth + 1) for item in obj)
    return obj


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
        self._current = sentry_scope.Scope.get_isolation_scope

    def enter(self) -> Any:
        return self._var.set(self._current().fork())

    def leave(self, token: Any) -> None:
        self._var.reset(token)


async def run_traced(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    """Run one request inside a Sentry transaction named by its route template."""
    import sentry_sdk

    from buttress._routes import resolve_route

    headers = {
        k.decode("latin-1"): v.decode("latin-1")
        for k, v in scope.get("headers") or ()
        if k in (b"sentry-trace", b"baggage", b"traceparent")
    }
    info: RequestRecord | None = record_of(scope)
    status = 0

    async def send_status(message: Any) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        await send(message)

    with sentry_sdk.isolation_scope():
        transaction = sentry_sdk.continue_trace(
            headers,
            op="http.server",
            name=scope.get("path", ""),
            source="url",
            origin="auto.http.buttress",
        )
        with sentry_sdk.start_transaction(transaction):
            try:
                await app(scope, receive, send_status)
            finally:
                route = resolve_route(scope, info)
                if route is not None:
                    transaction.name = route
                    transaction.source = "route"
                    sentry_sdk.get_current_scope().set_transaction_name(route, source="route")
                transaction.set_http_status(status or 500)
