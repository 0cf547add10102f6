"""Every route an app declares, read from its framework's router without serving a request.

Each framework keeps its routes in its own shape: Starlette and FastAPI in ``app.routes``
(through ``Mount``s, ``Host``s and FastAPI's included routers), Litestar in ``app.routes``,
Django in its URL resolver (through ``include()``), Quart in ``app.url_map``. A raw ASGI
app has none to read. Templates come out in buttress' spelling (``/items/{item_id}``, a
catch-all as ``{name:path}``), next to the label the metrics layer gives the route at run
time (``DeclaredRoute.label``), which is what the framework hands buttress.

# Strategy: the app buttress serves may sit under middleware (``wrap()``'s layers, the
# user's own CORS): ``find_framework`` follows ``.app`` down to the first object it knows.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Iterator
from typing import Any

from buttress._route_tables import _format
from buttress.adapters import _braces

__all__ = ["DeclaredRoute", "find_framework", "routes_of"]

_ANGLE = re.compile(r"<(?:([A-Za-z_][\w]*)(?:\([^)]*\))?:)?([A-Za-z_]\w*)>")
_BRACE = re.compile(r"\{([A-Za-z_]\w*)(?::([A-Za-z_]+))?\}")
_REGEX_GROUP = re.compile(r"\(\?P<([A-Za-z_]\w*)>(?:[^()]|\([^()]*\))*\)")


@dataclasses.dataclass(frozen=True)
class DeclaredRoute:
    """One route: its methods (None: any), template, metrics label, framework and kind."""

    methods: tuple[str, ...] | None
    template: str
    label: str
    framework: str
    kind: str = "http"  # or "websocket"

    @property
    def sample(self) -> str:
        """A path this route serves: the template itself (``{x}`` fits any parameter)."""
        return _BRACE.sub(lambda m: "{" + m.group(1) + "}", self.template)

    def fits(self, path: str) -> bool:
        """Whether ``path`` (a concrete path, as a limit pattern may name) is one of this route's."""
        out, last = [], 0
        for m in _BRACE.finditer(self.template):
            out.append(re.escape(self.template[last : m.start()]))
            out.append(".+" if m.group(2) == "path" else "[^/]+")
            last = m.end()
        out.append(re.escape(self.template[last:]))
        return re.fullmatch("".join(out), path) is not None


def find_framework(app: Any) -> tuple[str, Any]:
    """The framework name and its app object, looking through middleware; ``("raw", app)``."""
    node = app
    for _ in range(32):
        if node is None:
            break
        module = type(node).__module__.partition(".")[0]
        if module == "django" and hasattr(node, "get_response_async"):
            return "django", node
        if module == "quart" and hasattr(node, "url_map"):
            return "quart", node
        if module == "litestar" and isinstance(getattr(node, "routes", None), list):
            return "litestar", node
        if module in ("starlette", "fastapi") and isinstance(getattr(node, "routes", None), list):
            return _starlette_kind(node), node
        node = getattr(node, "app", None)
    return "raw", app


def routes_of(framework: str, app: Any) -> list[DeclaredRoute] | None:
    """The routes ``app`` declares, or None for a raw ASGI app (it has no route table)."""
    if framework in ("starlette", "fastapi"):
        return list(_starlette(app.routes, "", framework, 0))
    if framework == "litestar":
        return list(_litestar(app))
    if framework == "django":
        return list(_django())
    if framework == "quart":
        return list(_quart(app))
    return None


# --- Starlette and FastAPI --------------------------------------------------------------


def _starlette_kind(app: Any) -> str:
    return "fastapi" if type(app).__module__.partition(".")[0] == "fastapi" else "starlette"


def _keep_path(path: str) -> str:
    """``/f/{p:path}`` kept, ``/i/{x:int}`` as ``/i/{x}``: only a catch-all routes differently."""
    return _BRACE.sub(lambda m: "{" + m.group(1) + ":path" * (m.group(2) == "path") + "}", path)


def _starlette(routes: Iterable[Any], prefix: str, framework: str, depth: int) -> Iterator[Any]:
    from starlette.routing import Host, Mount, WebSocketRoute

    from buttress._route_tables import _inner_routes

    if depth > 32:
        return
    for route in routes:
        original = getattr(route, "original_router", None)  # FastAPI >= 0.137 include_router
        if original is not None:
            included = getattr(getattr(route, "include_context", None), "prefix", "") or ""
            yield from _starlette(original.routes, prefix + included, framework, depth + 1)
        elif isinstance(route, Mount):
            inner = _inner_routes(route.app)
            mounted = prefix + route.path
            if inner:
                kind = _starlette_kind(route.app) if hasattr(route.app, "router") else framework
                yield from _starlette(inner, mounted, kind, depth + 1)
            else:  # a plain ASGI app: every path under the mount, any method
                label = _format(mounted) + "/{path}"
                yield DeclaredRoute(None, _keep_path(mounted) + "/{path:path}", label, framework)
        elif isinstance(route, Host):
            yield from _starlette(_inner_routes(route.app), prefix, framework, depth + 1)
        elif isinstance(getattr(route, "path", None), str):
            methods = getattr(route, "methods", None)
            kind = "websocket" if isinstance(route, WebSocketRoute) else "http"
            yield DeclaredRoute(
                tuple(sorted(methods)) if methods else None,
                _keep_path(prefix + route.path),
                _format(prefix + route.path),
                framework,
                kind,
            )


# --- Litestar ---------------------------------------------------------------------------


def _litestar(app: Any) -> Iterator[DeclaredRoute]:
    for route in app.routes:
        path, label = route.path, route.path_format or "/"
        handlers = getattr(route, "route_handlers", ())
        if any(getattr(h, "is_mount", False) for h in handlers):
            yield DeclaredRoute(None, _keep_path(path) + "/{path:path}", label, "litestar")
            continue
        kind = "websocket" if type(route).__name__ == "WebSocketRoute" else "http"
        methods = getattr(route, "methods", None)
        if kind == "http" and not methods:
            methods = None  # an ASGI route: any method
        yield DeclaredRoute(
            tuple(sorted(methods)) if methods else None,
            _keep_path(path) or "/",
            label,
            "litestar",
            kind,
        )


# --- Django -----------------------------------------------------------------------------


def _django() -> Iterator[DeclaredRoute]:
    import importlib

    urls: Any = importlib.import_module("django.urls")  # Django ships no type hints
    yield from _django_walk(urls.get_resolver().url_patterns, [], 0)


def _django_walk(patterns: Iterable[Any], parts: list[str], depth: int) -> Iterator[DeclaredRoute]:
    if depth > 32:
        return
    for pattern in patterns:
        here = [*parts, str(pattern.pattern)]
        if hasattr(pattern, "url_patterns"):  # a URLResolver: an include()
            yield from _django_walk(pattern.url_patterns, here, depth + 1)
            continue
        # As Django's ResolverMatch.route joins them: a later part loses its leading ``^``.
        route = here[0] + "".join(p.removeprefix("^") for p in here[1:])
        template = "/" + "".join(_django_part(p) for p in here)
        yield DeclaredRoute(None, template, _braces("/" + route), "django")


def _django_part(text: str) -> str:
    """One ``path()`` or ``re_path()`` part as a template (a regex part loses ``^``/``$``)."""
    if text.startswith("^") or text.endswith("$") or "(?P<" in text:
        text = _REGEX_GROUP.sub(lambda m: "{" + m.group(1) + "}", text.strip("^$"))
        return re.sub(r"\\(.)", r"\1", text)
    return _angles_as_braces(text)


def _angles_as_braces(rule: str) -> str:
    """``/f/<path:p>`` as ``/f/{p:path}``, ``/i/<int:x>`` as ``/i/{x}`` (the metrics label
    comes from ``adapters._braces``, as at run time)."""

    def one(m: re.Match[str]) -> str:
        return "{" + m.group(2) + (":path" if m.group(1) == "path" else "") + "}"

    return _ANGLE.sub(one, rule)


# --- Quart ------------------------------------------------------------------------------


def _quart(app: Any) -> Iterator[DeclaredRoute]:
    for rule in app.url_map.iter_rules():
        yield DeclaredRoute(
            tuple(sorted(rule.methods)) if rule.methods else None,
            _angles_as_braces(rule.rule),
            _braces(rule.rule),
            "quart",
            "websocket" if getattr(rule, "websocket", False) else "http",
        )
