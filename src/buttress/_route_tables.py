"""Full route templates from a framework's route tree, built once and looked up per request.

# Strategy: a router knows its templates; the scope knows only which route matched.
#
# Starlette and FastAPI leave the matched route (``scope["route"]``, Starlette >= 1.7 and
# FastAPI's API routes) or only its endpoint (``scope["endpoint"]``, every version) in the
# scope, with a template relative to the ``Mount`` it sits in. The text a ``Mount`` matched
# (``/orgs/acme``) is in ``scope["root_path"]``, but it is the raw path: labelling by it
# would put user input in a metric label. So the tree of the outermost router
# (``scope["router"]``, set by the first Starlette router a request meets) is walked once
# into a table: route (and endpoint) -> the templates of the mounts above it
# (``/orgs/{org}``). A request then costs two dict lookups. A route the table does not
# know (added after the walk) rebuilds it once; a route still unknown is remembered as
# such, so no request walks the tree twice. When one route or endpoint sits under several
# mounts, the matched text picks the mount whose pattern it fits.
#
# Litestar before ``scope["path_template"]`` existed leaves ``scope["route_handler"]``;
# its app's routes map handlers to ``path_format`` the same way.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from buttress._asgi import Scope

__all__ = [
    "UNKNOWN_ROUTE",
    "IdentityCache",
    "litestar_route_template",
    "starlette_route_template",
]

_PARAM = re.compile(r"{([^}:]+)(?::([^}]+))?}")
_CONVERTER_REGEX = {"str": "[^/]+", "path": ".*", "int": "[0-9]+", "float": r"[0-9]+(?:\.[0-9]+)?"}
_UNKNOWN: Any = object()
#: What ``starlette_route_template`` answers for a route its router's tree does not hold.
UNKNOWN_ROUTE: Any = _UNKNOWN


class IdentityCache:
    """A bounded map keyed by object identity (routers and routes define ``__eq__``).

    It keeps the key object alive beside its value, so an id is never reused while its
    entry exists; past ``size`` entries it starts over (apps built per test, not a leak).
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: dict[int, tuple[Any, Any]] = {}

    def get(self, key: Any) -> Any:
        entry = self._entries.get(id(key))
        if entry is not None and entry[0] is key:
            return entry[1]
        return _UNKNOWN

    def put(self, key: Any, value: Any) -> None:
        if len(self._entries) >= self._size:
            self._entries.clear()
        self._entries[id(key)] = (key, value)


def _format(path: str) -> str:
    """``/items/{item_id:int}`` as ``/items/{item_id}``."""
    return _PARAM.sub(lambda m: "{" + m.group(1) + "}", path)


def _pattern(path: str) -> str:
    """A regex for a template's text, without named groups (names repeat across mounts)."""
    out: list[str] = []
    last = 0
    for m in _PARAM.finditer(path):
        out.append(re.escape(path[last : m.start()]))
        out.append(_CONVERTER_REGEX.get(m.group(2) or "str", "[^/]+"))
        last = m.end()
    out.append(re.escape(path[last:]))
    return "".join(out)


class _Entry:
    """One place a route sits: its mount prefix, and its own template (None for a router mount)."""

    __slots__ = ("own", "prefix", "prefix_regex", "route", "route_regex")

    def __init__(self, route: Any, prefix: str, prefix_raw: str, own: str | None) -> None:
        self.route = route
        self.prefix = prefix
        self.prefix_regex = re.compile(_pattern(prefix_raw)) if prefix_raw else None
        self.own = own
        self.route_regex: Any = getattr(route, "path_regex", None)


def _inner_routes(app: Any) -> list[Any]:
    """The routes of a mounted app, looking through middleware wrapped around it."""
    from starlette.routing import BaseRoute

    for _ in range(16):
        routes = getattr(app, "routes", None)
        if isinstance(routes, list) and any(isinstance(r, BaseRoute) for r in routes):
            return routes
        app = getattr(app, "app", None)
        if app is None:
            break
    return []


class _StarletteTable:
    """Route and endpoint -> where it sits, for one outermost router."""

    def __init__(self, router: Any) -> None:
        self.by_route: dict[int, list[_Entry]] = {}
        self.by_endpoint: dict[int, list[_Entry]] = {}
        self.unknown = IdentityCache(1024)
        self._walk(router.routes, "", "", 0)

    def _add(self, route: Any, endpoint: Any, entry: _Entry) -> None:
        self.by_route.setdefault(id(route), []).append(entry)
        if endpoint is not None:
            self.by_endpoint.setdefault(id(endpoint), []).append(entry)

    def _walk(self, routes: Iterable[Any], prefix: str, raw: str, depth: int) -> None:
        from starlette.routing import BaseRoute, Host, Mount

        if depth > 32:
            return
        for route in routes:
            original = getattr(route, "original_router", None)  # FastAPI >= 0.137 include
            if original is not None:
                context = getattr(route, "include_context", None)
                included = getattr(context, "prefix", "") or ""
                self._walk_included(original.routes, prefix, raw, included, depth + 1)
                continue
            if not isinstance(route, BaseRoute):
                continue
            if isinstance(route, Mount):
                inner = _inner_routes(route.app)
                own = None if inner else prefix + _format(route.path) + "/{path}"
                self._add(route, route.app, _Entry(route, prefix, raw, own))
                if inner:
                    self._walk(inner, prefix + _format(route.path), raw + route.path, depth + 1)
            elif isinstance(route, Host):
                self._add(route, route.app, _Entry(route, prefix, raw, None))
                self._walk(_inner_routes(route.app), prefix, raw, depth + 1)
            else:
                path = getattr(route, "path_format", None)
                own = prefix + path if isinstance(path, str) else None
                self._add(route, getattr(route, "endpoint", None), _Entry(route, prefix, raw, own))

    def _walk_included(
        self, routes: Iterable[Any], prefix: str, raw: str, included: str, depth: int
    ) -> None:
        """Routes of a FastAPI-included router: their own template comes from FastAPI's context."""
        from starlette.routing import Mount

        for route in routes:
            if isinstance(route, Mount):  # a mount inside the router also gets its prefix
                self._walk([route], prefix + _format(included), raw + included, depth)
            elif getattr(route, "original_router", None) is not None:
                context = getattr(route, "include_context", None)
                inner = getattr(context, "prefix", "") or ""
                self._walk_included(route.original_router.routes, prefix, raw, inner, depth + 1)
            else:
                self._walk([route], prefix, raw, depth)

    def entries(self, route: Any, endpoint: Any) -> list[_Entry] | None:
        if route is not None:
            found = self.by_route.get(id(route))
            if found and found[0].route is route:
                return found
            return None
        return self.by_endpoint.get(id(endpoint))


_tables = IdentityCache(64)


def _table(router: Any, rebuild: bool = False) -> _StarletteTable | None:
    table = _tables.get(router)
    if table is _UNKNOWN or rebuild:
        if not isinstance(getattr(router, "routes", None), list):
            return None
        table = _StarletteTable(router)
        _tables.put(router, table)
    return table  # type: ignore[no-any-return]


def _route_path(scope: Scope) -> str:
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def _pick(entries: list[_Entry], scope: Scope, base: str, by_endpoint: bool) -> _Entry | None:
    """The one place of several that this request went through.

    The text the mounts matched fits the mount prefix of the right place: in full when the
    server's root path (``base``) is known, else at its end, where a bare prefix fits last.
    """
    if len(entries) == 1:
        return entries[0]
    root: str = scope.get("root_path", "")
    matched = root[len(base) :] if root.startswith(base) else root
    rest = _route_path(scope)
    fitting = [
        e
        for e in entries
        if not (by_endpoint and e.route_regex is not None and not e.route_regex.match(rest))
    ]
    for entry in fitting:
        regex = entry.prefix_regex
        if (regex is None and not matched) or (regex is not None and regex.fullmatch(matched)):
            return entry
    for entry in fitting:
        regex = entry.prefix_regex
        if regex is not None and re.search(f"(?:{regex.pattern})\\Z", matched):
            return entry
    return next((e for e in fitting if e.prefix_regex is None), None)


def starlette_route_template(
    scope: Scope, route: Any, endpoint: Any, relative: str | None, base: str
) -> Any:
    """The full template of the Starlette/FastAPI route that served ``scope``.

    ``route`` is the matched route (or None: find it by ``endpoint``), ``relative`` its
    template inside its mount when FastAPI's context knows better than the route, ``base``
    the server's root path. Returns ``UNKNOWN_ROUTE`` when the route tree does not hold it.
    """
    router = scope.get("router")
    if router is None:
        return _UNKNOWN
    table = _table(router)
    if table is None:
        return _UNKNOWN
    key = route if route is not None else endpoint
    entries = table.entries(route, endpoint)
    if entries is None:
        if table.unknown.get(key) is not _UNKNOWN:
            return _UNKNOWN
        table = _table(router, rebuild=True)  # routes added since the walk
        entries = table.entries(route, endpoint) if table is not None else None
        if entries is None:
            if table is not None:
                table.unknown.put(key, True)
            return _UNKNOWN
    entry = _pick(entries, scope, base, route is None)
    if entry is None:
        return None
    if relative is not None:
        return entry.prefix + relative
    return entry.own


# --- Litestar ---------------------------------------------------------------------------

_litestar_tables = IdentityCache(64)


def _litestar_table(app: Any) -> dict[int, list[tuple[Any, str, Any]]]:
    table: dict[int, list[tuple[Any, str, Any]]] = {}
    for route in getattr(app, "routes", ()):
        path = getattr(route, "path_format", None)
        if not isinstance(path, str):
            continue
        regex = re.compile(_pattern(path) + "/?")
        for handler in getattr(route, "route_handlers", ()):
            table.setdefault(id(handler), []).append((handler, path or "/", regex))
    return table


def litestar_route_template(scope: Scope) -> str | None:
    """The template of the handler Litestar (before ``path_template``) routed to, or None."""
    handler = scope.get("route_handler")
    app = scope.get("litestar_app") or scope.get("app")
    if handler is None or app is None:
        return None
    table = _litestar_tables.get(app)
    if table is _UNKNOWN or id(handler) not in table:
        table = _litestar_table(app)
        _litestar_tables.put(app, table)
    found = [e for e in table.get(id(handler), ()) if e[0] is handler]
    if len(found) > 1:
        rest = _route_path(scope)
        found = [e for e in found if e[2].fullmatch(rest)]
    return found[0][1] if len(found) == 1 else None
