"""The route template of a request: one resolver shared by logs, metrics and Sentry.

Read after the app ran, from what the framework left in the shared scope. Adapters for
frameworks that keep their template elsewhere (Django, Quart) put it in
``scope["buttress.route"]``, which wins over everything else.
"""

from __future__ import annotations

from buttress._asgi import RequestInfo, Scope
from buttress.adapters import ROUTE_KEY

UNMATCHED = "<unmatched>"


def _template(scope: Scope, info: RequestInfo | None) -> str | None:
    explicit = scope.get(ROUTE_KEY)
    if isinstance(explicit, str):
        return explicit
    template = scope.get("path_template")  # Litestar
    if isinstance(template, str):
        return template
    route = scope.get("route")  # Starlette / FastAPI
    path = getattr(route, "path", None)
    if isinstance(path, str):
        root = scope.get("root_path", "")
        base = info.root_path if info is not None else ""
        prefix = root[len(base) :] if root.startswith(base) else ""
        return prefix + path
    return None


def resolve_route(scope: Scope, info: RequestInfo | None = None) -> str | None:
    """The route template of the request (``/items/{item_id}``), or None when unknown.

    The answer is cached on ``info`` so every layer of one request agrees and pays once.
    """
    if info is not None:
        if info.route_resolved:
            return info.route
        info.route = _template(scope, info)
        info.route_resolved = True
        return info.route
    return _template(scope, None)
