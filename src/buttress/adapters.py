"""One-line adapters for frameworks that keep what buttress needs out of the ASGI scope.

Two scope keys are the whole contract between a framework and the buttress layers:

- ``scope["buttress.route"]``: the route template (``/items/{item_id}``) that matched.
- ``scope["buttress.exception"]``: an exception the framework caught and turned into its
  own 500 page; the error layer then logs, maps and reports it as if it had propagated.

Starlette, FastAPI and Litestar put the template in the scope themselves. ``wrap()``
installs the Quart, Litestar and Django hooks by itself; a Django view's exception needs
``DjangoMiddleware`` in ``MIDDLEWARE`` (Django builds its middleware chain before
``wrap()`` can see it).
"""

from __future__ import annotations

import inspect
import logging
import re
import weakref
from typing import Any

from buttress._request import EXCEPTION_KEY, ROUTE_KEY

__all__ = [
    "EXCEPTION_KEY",
    "ROUTE_KEY",
    "DjangoMiddleware",
    "install_adapters",
    "install_django",
    "install_litestar",
    "install_quart",
    "install_starlette",
]


# Quart apps already hooked (idempotence without touching the app's attributes).
_installed: weakref.WeakSet[Any] = weakref.WeakSet()

_CONVERTER = re.compile(r"<(?:[^>:]+:)?([^>]+)>")


def _braces(rule: str) -> str:
    """``/items/<int:item_id>`` (Django, Quart, Werkzeug) as ``/items/{item_id}``."""
    return _CONVERTER.sub(r"{\1}", rule)


def install_adapters(app: Any) -> None:
    """Install the hooks of the framework ``app`` belongs to, when it needs any."""
    module = type(app).__module__.partition(".")[0]
    if module == "quart":
        install_quart(app)
    elif module == "litestar":
        install_litestar(app)
    elif module == "django":
        install_django(app)
    elif module in ("starlette", "fastapi") and isinstance(
        getattr(app, "exception_handlers", None), dict
    ):
        install_starlette(app)


# --- Starlette and FastAPI --------------------------------------------------------------


def install_starlette(app: Any) -> None:
    """Hand each ``HTTPException`` the app answers to buttress, for Sentry (idempotent).

    The framework still makes the response (its own handler, or the app's); buttress only
    learns which exception it answered, so a configured status (``409``) can be reported.
    """
    from starlette.exceptions import HTTPException

    handlers: dict[Any, Any] = app.exception_handlers
    current = handlers.get(HTTPException)
    if getattr(current, "_buttress", False):
        return

    async def record_http_exception(request: Any, exc: Exception) -> Any:
        result: Any
        request.scope[EXCEPTION_KEY] = exc
        if current is None:
            from starlette.middleware.exceptions import ExceptionMiddleware

            # A coroutine since Starlette 0.41, a plain function before.
            result = ExceptionMiddleware.http_exception(None, request, exc)  # type: ignore[arg-type]
        else:
            result = current(request, exc)
        if inspect.isawaitable(result):
            result = await result
        return result

    record_http_exception._buttress = True  # type: ignore[attr-defined]
    handlers[HTTPException] = record_http_exception
    if getattr(app, "middleware_stack", None) is not None:
        app.middleware_stack = None  # rebuilt with the handler on the next request


# --- Quart ------------------------------------------------------------------------------


def install_quart(app: Any) -> None:
    """Record the matched rule and hand unhandled exceptions to buttress (idempotent)."""
    if app in _installed:
        return
    from quart import got_request_exception, request

    async def record_route() -> None:
        rule = request.url_rule
        scope: Any = request.scope
        if rule is None:
            rule = _quart_rule_of_405(request)
        if rule is not None:
            scope[ROUTE_KEY] = _braces(request.root_path + rule.rule)

    async def record_exception(sender: Any, exception: BaseException, **_: Any) -> None:
        scope: Any = request.scope
        scope[EXCEPTION_KEY] = exception

    app.before_request(record_route)
    got_request_exception.connect(record_exception, app, weak=False)
    app.logger.addFilter(_quart_log_filter)
    _installed.add(app)


def _quart_rule_of_405(request: Any) -> Any:
    """The rule whose path matched when only the method did not (Werkzeug keeps no rule)."""
    from quart.globals import request_ctx
    from werkzeug.exceptions import MethodNotAllowed

    error = request.routing_exception
    methods = getattr(error, "valid_methods", None)
    if not isinstance(error, MethodNotAllowed) or not methods:
        return None
    adapter: Any = request_ctx.url_adapter
    try:
        rule, _ = adapter.match(method=methods[0], return_rule=True)
    except Exception:  # the adapter answers a redirect or another miss: no template
        return None
    return rule


def _quart_log_filter(record: logging.LogRecord) -> bool:
    """Drop Quart's own traceback for an exception buttress logs (once) itself."""
    from quart import has_request_context, request

    if record.exc_info and has_request_context():
        scope: Any = request.scope
        return scope.get(EXCEPTION_KEY) is not record.exc_info[1]
    return True


# --- Litestar ---------------------------------------------------------------------------


async def _litestar_record_exception(exception: BaseException, scope: Any) -> None:
    status = getattr(exception, "status_code", 500)
    if not isinstance(status, int) or status >= 500:
        scope[EXCEPTION_KEY] = exception
    elif status == 405 and "path_template" not in scope:
        _litestar_template_of_405(exception, scope)


def _litestar_template_of_405(exception: BaseException, scope: Any) -> None:
    """Route a 405 again with a method the path allows: its route names the template.

    Litestar raises ``MethodNotAllowedException`` while routing, before it records the
    template; routing is cached by Litestar (``handle_routing``), and this runs on 405s only.
    """
    from litestar.utils import normalize_path

    app = scope.get("litestar_app") or scope.get("app")
    router = getattr(app, "asgi_router", None)
    # Newer Litestar names the allowed methods; 2.10 does not: OPTIONS (its automatic handler).
    allow = (getattr(exception, "headers", None) or {}).get("allow", "")
    method = allow.split(",")[0].strip() or "OPTIONS"
    if router is None:
        return
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root:
        path = path.split(root, maxsplit=1)[-1]
    try:
        handle = router.handle_routing(path=normalize_path(path), method=method)[0]
    except Exception:  # not routable after all: no template
        return
    template = getattr(getattr(handle, "__self__", None), "path_format", None)
    if isinstance(template, str):
        scope["path_template"] = template or "/"


def install_litestar(app: Any) -> None:
    """Hand exceptions Litestar turns into a 500 to buttress (idempotent)."""
    hooks = list(getattr(app, "after_exception", None) or [])
    if _litestar_record_exception not in hooks:
        app.after_exception = [*hooks, _litestar_record_exception]


# --- Django -----------------------------------------------------------------------------


def _django_route(request: Any, match: Any) -> None:
    scope = getattr(request, "scope", None)
    if scope is not None and match is not None:
        scope[ROUTE_KEY] = _braces(request.META.get("SCRIPT_NAME", "") + "/" + match.route)


def install_django(app: Any) -> None:
    """Record the URL pattern Django resolved, without ``DjangoMiddleware`` (idempotent).

    Wraps the handler's own ``resolve_request`` on this handler only, so the pattern costs
    nothing beyond Django's resolution. Exceptions still need ``DjangoMiddleware``.
    """
    resolve = getattr(app, "resolve_request", None)
    if resolve is None or getattr(resolve, "_buttress", False):
        return

    def resolve_request(request: Any) -> Any:
        match = resolve(request)
        _django_route(request, getattr(request, "resolver_match", None))
        return match

    resolve_request._buttress = True  # type: ignore[attr-defined]
    app.resolve_request = resolve_request


class DjangoMiddleware:
    """Add ``"buttress.adapters.DjangoMiddleware"`` to ``MIDDLEWARE`` (first is best).

    It records the URL pattern that matched and hands a view's unhandled exception to
    buttress, which otherwise only sees Django's HTML 500 page.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Any) -> None:
        from asgiref.sync import iscoroutinefunction, markcoroutinefunction

        self.get_response = get_response
        self._async = iscoroutinefunction(get_response)
        # Django logs the traceback of a view's exception itself; buttress logs it once.
        logging.getLogger("django.request").addFilter(_django_log_filter)
        if self._async:
            markcoroutinefunction(self)

    def __call__(self, request: Any) -> Any:
        if self._async:
            return self.__acall__(request)
        return self.get_response(request)

    async def __acall__(self, request: Any) -> Any:
        return await self.get_response(request)

    def process_view(self, request: Any, view: Any, args: Any, kwargs: Any) -> None:
        _django_route(request, request.resolver_match)

    def process_exception(self, request: Any, exception: BaseException) -> None:
        scope = getattr(request, "scope", None)
        if scope is not None:
            scope[EXCEPTION_KEY] = exception


def _django_log_filter(record: logging.LogRecord) -> bool:
    """Drop Django's own traceback for an exception handed to buttress (logged there once)."""
    scope = getattr(getattr(record, "request", None), "scope", None)
    if record.exc_info and isinstance(scope, dict):
        return scope.get(EXCEPTION_KEY) is not record.exc_info[1]
    return True
