"""One-line adapters for frameworks that keep what buttress needs out of the ASGI scope.

Two scope keys are the whole contract between a framework and the buttress layers:

- ``scope["buttress.route"]``: the route template (``/items/{item_id}``) that matched.
- ``scope["buttress.exception"]``: an exception the framework caught and turned into its
  own 500 page; the error layer then logs, maps and reports it as if it had propagated.

Starlette, FastAPI and Litestar put the template in the scope themselves. ``wrap()``
installs the Quart and Litestar hooks by itself; Django needs ``DjangoMiddleware`` in
``MIDDLEWARE`` (Django builds its middleware chain before ``wrap()`` can see it).
"""

from __future__ import annotations

import re
import weakref
from typing import Any

__all__ = ["DjangoMiddleware", "install_adapters", "install_litestar", "install_quart"]

ROUTE_KEY = "buttress.route"
EXCEPTION_KEY = "buttress.exception"

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


# --- Quart ------------------------------------------------------------------------------


def install_quart(app: Any) -> None:
    """Record the matched rule and hand unhandled exceptions to buttress (idempotent)."""
    if app in _installed:
        return
    from quart import got_request_exception, request

    async def record_route() -> None:
        rule = request.url_rule
        scope: Any = request.scope
        if rule is not None:
            scope[ROUTE_KEY] = _braces(request.root_path + rule.rule)

    async def record_exception(sender: Any, exception: BaseException, **_: Any) -> None:
        scope: Any = request.scope
        scope[EXCEPTION_KEY] = exception

    app.before_request(record_route)
    got_request_exception.connect(record_exception, app, weak=False)
    _installed.add(app)


# --- Litestar ---------------------------------------------------------------------------


async def _litestar_record_exception(exception: BaseException, scope: Any) -> None:
    status = getattr(exception, "status_code", 500)
    if not isinstance(status, int) or status >= 500:
        scope[EXCEPTION_KEY] = exception


def install_litestar(app: Any) -> None:
    """Hand exceptions Litestar turns into a 500 to buttress (idempotent)."""
    hooks = list(getattr(app, "after_exception", None) or [])
    if _litestar_record_exception not in hooks:
        app.after_exception = [*hooks, _litestar_record_exception]


# --- Django -----------------------------------------------------------------------------


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
        if self._async:
            markcoroutinefunction(self)

    def __call__(self, request: Any) -> Any:
        if self._async:
            return self.__acall__(request)
        return self.get_response(request)

    async def __acall__(self, request: Any) -> Any:
        return await self.get_response(request)

    def process_view(self, request: Any, view: Any, args: Any, kwargs: Any) -> None:
        scope = getattr(request, "scope", None)
        match = request.resolver_match
        if scope is not None and match is not None:
            scope[ROUTE_KEY] = _braces(request.META.get("SCRIPT_NAME", "") + "/" + match.route)

    def process_exception(self, request: Any, exception: BaseException) -> None:
        scope = getattr(request, "scope", None)
        if scope is not None:
            scope[EXCEPTION_KEY] = exception
