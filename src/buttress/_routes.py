"""The route template of a request: one resolver shared by logs, metrics and Sentry.

Read after the app ran, from what the framework left in the shared scope. Adapters for
frameworks that keep their template elsewhere (Django, Quart) put it in
``scope["buttress.route"]``, which wins over everything else.

# Strategy: where each framework leaves its template, checked in this order.
#
# - ``scope["buttress.route"]``: our adapters (Django middleware, Quart hook). They build
#   it from the framework's script name / root path plus the rule, so the original
#   (server-level) root path is cut off here, as it is for every other framework.
# - ``scope["path_template"]``: Litestar writes the matched route's ``path_format``.
# - FastAPI >= 0.137 serves ``include_router`` routes through an "effective route context"
#   kept in ``scope["fastapi"]["effective_route_context"]``; ``scope["route"]`` is the
#   *original* ``APIRoute``, whose ``path`` lost every include prefix. The context's
#   ``path_format`` has them, so it is used when it belongs to ``scope["route"]`` (a
#   stale context from an outer app never labels a route of a mounted one).
# - ``scope["route"]``: Starlette (and FastAPI without prefixes) sets the innermost
#   matched route. Its template is relative to the app that matched it; each ``Mount``
#   on the way grew ``scope["root_path"]``, so the growth since the request began (the
#   original root path is kept on ``RequestRecord``) is the mount prefix. A server-level
#   ``--root-path`` is deployment, not routing, and is left out.
# ``path_format`` (``/items/{item_id}``) is preferred over ``path``
# (``/items/{item_id:int}``) so every framework agrees on one spelling.
"""

from __future__ import annotations

from typing import Any

from buttress._asgi import Scope
from buttress._request import ROUTE_KEY, RequestRecord

__all__ = ["OTHER", "UNMATCHED", "resolve_route"]

#: The route label of a request no route matched (a 404) and no path group covers.
UNMATCHED = "<unmatched>"
#: The route label once the cap of distinct route values is reached.
OTHER = "<other>"


def _route_path(route: Any) -> str | None:
    path = getattr(route, "path_format", None)
    if not isinstance(path, str):
        path = getattr(route, "path", None)
    return path if isinstance(path, str) else None


def _template(scope: Scope, info: RequestRecord | None) -> str | None:
    explicit = scope.get(ROUTE_KEY)
    if isinstance(explicit, str):
        root = info.root_path if info is not None else ""
        if root and explicit.startswith(root) and explicit[len(root) : len(root) + 1] == "/":
            return explicit[len(root) :]
        return explicit
    template = scope.get("path_template")  # Litestar
    if isinstance(template, str) and template:
        return template
    route = scope.get("route")  # Starlette / FastAPI
    if route is None:
        return None
    path: str | None = None
    fastapi = scope.get("fastapi")
    if isinstance(fastapi, dict):
        context = fastapi.get("effective_route_context")
        if context is not None and getattr(context, "original_route", None) is route:
            path = _route_path(getattr(context, "starlette_route", None)) or _route_path(context)
    if path is None:
        path = _route_path(route)
        if path is None:
            return None
    root = scope.get("root_path", "")
    base = info.root_path if info is not None else ""
    prefix = root[len(base) :] if root.startswith(base) else ""
    if getattr(route, "endpoint", None) is None and path.endswith("/{path}"):
        # The innermost route is a Mount. When it holds routes, none of them matched
        # (a 404 inside the mount). A mounted plain ASGI app is labelled by its prefix,
        # which the root path already grew by.
        if getattr(route, "routes", None):
            return None
        return prefix + "/{path}"
    return prefix + path


def resolve_route(scope: Scope, info: RequestRecord | None = None) -> str | None:
    """The route template of the request (``/items/{item_id}``), or None when unknown.

    The answer is cached on ``info`` so every layer of one request agrees and pays once;
    call it after the app ran (the framework sets what it reads while routing).
    """
    if info is not None:
        if info.route_resolved:
            return info.route
        info.route = _template(scope, info)
        info.route_resolved = True
        return info.route
    return _template(scope, None)
