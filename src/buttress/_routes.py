"""The route template of a request: one resolver shared by logs, metrics and Sentry.

Read after the app ran, from what the framework left in the shared scope. Adapters for
frameworks that keep their template elsewhere (Django, Quart) put it in
``scope["buttress.route"]``, which wins over everything else.

# Strategy: where each framework leaves its template, checked in this order.
#
# - ``scope["buttress.route"]``: our adapters (Django middleware, Quart hook). They build
#   it from the framework's script name / root path plus the rule, so the original
#   (server-level) root path is cut off here, as it is for every other framework.
# - ``scope["path_template"]``: Litestar writes the matched route's ``path_format``;
#   Litestar before that left only ``scope["route_handler"]``, looked up in its app's routes.
# - FastAPI >= 0.137 serves ``include_router`` routes through an "effective route context"
#   kept in ``scope["fastapi"]["effective_route_context"]``; ``scope["route"]`` is the
#   *original* ``APIRoute``, whose ``path`` lost every include prefix. The context's
#   ``path_format`` has them, so it is used when it belongs to the matched route (a
#   stale context from an outer app never labels a route of a mounted one).
# - ``scope["route"]`` (Starlette >= 1.7, FastAPI's API routes) or else
#   ``scope["endpoint"]`` (every Starlette version) names the innermost matched route.
#   Its template is relative to the ``Mount`` it sits in; ``_route_tables`` maps it to
#   the mounts' templates (``/orgs/{org}``) from the outermost router's tree, built once.
#   Only a route outside that tree falls back to the growth of ``scope["root_path"]``
#   (the text the mounts matched), and only when no mount captured a parameter. A
#   server-level ``--root-path`` is deployment, not routing, and is left out.
# ``path_format`` (``/items/{item_id}``) is preferred over ``path``
# (``/items/{item_id:int}``) so every framework agrees on one spelling.
"""

from __future__ import annotations

from typing import Any

from buttress._asgi import Scope
from buttress._request import ROUTE_KEY, RequestRecord
from buttress._route_tables import (
    UNKNOWN_ROUTE,
    litestar_route_template,
    starlette_route_template,
)

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
    if "route_handler" in scope:  # Litestar before path_template
        return litestar_route_template(scope)
    return _starlette_template(scope, info.root_path if info is not None else "")


def _endpoint_of(route: Any) -> Any:
    """What a matched route puts in ``scope["endpoint"]`` (a mount: its app)."""
    endpoint = getattr(route, "endpoint", None)
    return endpoint if endpoint is not None else getattr(route, "app", None)


def _starlette_template(scope: Scope, base: str) -> str | None:
    route = scope.get("route")
    endpoint = scope.get("endpoint")
    if route is None and endpoint is None:
        return None
    if route is not None and endpoint is not None and _endpoint_of(route) is not endpoint:
        route = None  # an outer router's mount; an inner router routed without saying so
    relative: str | None = None
    fastapi = scope.get("fastapi")
    if isinstance(fastapi, dict):
        context = fastapi.get("effective_route_context")
        if context is not None:
            original = getattr(context, "original_route", None)
            effective = getattr(context, "starlette_route", None)
            if original is route or (
                route is None and _endpoint_of(effective or context) is endpoint
            ):
                route = original
                relative = _route_path(effective) or _route_path(context)
    found = starlette_route_template(scope, route, endpoint, relative, base)
    if found is not UNKNOWN_ROUTE:
        return found  # type: ignore[no-any-return]
    return _from_root_path(scope, route, relative, base)


def _from_root_path(scope: Scope, route: Any, relative: str | None, base: str) -> str | None:
    """The fallback for a route outside the router's tree: the root path's growth as prefix.

    That growth is the text the mounts matched, so it is used only when no mount on the way
    captured a parameter (its value would become a label); otherwise the route is unknown.
    """
    path = relative or _route_path(route)
    if path is None:
        return None
    root = scope.get("root_path", "")
    prefix = root[len(base) :] if root.startswith(base) else ""
    if prefix:
        own = set(getattr(route, "param_convertors", None) or ())
        params = scope.get("path_params") or {}
        if any(name not in own for name in params) or any(
            isinstance(value, str) and value in prefix for value in params.values()
        ):
            return None
    if getattr(route, "endpoint", None) is None and path.endswith("/{path}"):
        # A mount: with routes, none of them matched (a 404 inside); a plain app is
        # labelled by its prefix.
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
