"""Route patterns matched against a request path the way the frameworks route it.

Match what the router will match. The rate limiter decides before the app runs,
so it cannot read the route the framework picks; it matches its patterns against every
spelling of the path that some framework routes to the same handler (measured for
Starlette, FastAPI, Litestar, Django and Quart behind uvicorn and hypercorn):
- repeated slashes collapsed and leading/trailing slashes dropped (Litestar routes
  ``//a``, ``/a//b`` and ``/a/`` to ``/a``; Quart routes ``//a``; Django patterns end
  in ``/``), on both the path and the pattern;
- the root path removed as text, not at a segment boundary (Litestar and Quart route
  ``/apiauth/login`` under root path ``/api``), and also after its first occurrence
  (Litestar), and the path left as it is (servers that do not prefix it);
- an absolute-form target (``http://host/a``, passed through by hypercorn) cut to its path;
- ``HEAD`` charged as ``GET`` (Starlette, Quart and Django run the GET handler).
Dot segments, case and percent-encoding are left alone: every framework routes on the
decoded path and none resolves ``.``/``..`` or folds case. A spelling no framework routes
is at worst charged to the limit it resembles; a spelling some framework routes is never
missed (tests/test_attacks.py sends each variant to each framework).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from buttress._asgi import Scope

__all__ = ["RouteTable", "path_spellings"]

_SEGMENT = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::([A-Za-z_]+))?\}")
_SLASHES = re.compile(r"/{2,}")
_ABSOLUTE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^/]*")


def _canonical(path: str) -> str:
    if "//" in path:
        path = _SLASHES.sub("/", path)
    return "/" + path.strip("/")


def path_spellings(scope: Scope) -> list[str]:
    """Every canonical spelling under which some framework may route this request."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if not root and "//" not in path and path[-1:] != "/" and path[:1] == "/":
        return [path]  # already canonical: the common case costs no string work
    if "://" in path:
        absolute = _ABSOLUTE.match(path)
        if absolute is not None:
            path = path[absolute.end() :] or "/"
    first = _canonical(path)
    if not root:
        return [first]
    at = path.find(root)  # a prefix, or (Litestar) its first occurrence anywhere
    if at < 0:
        return [first]
    stripped = _canonical(path[at + len(root) :])
    return [first] if stripped == first else [stripped, first]


def _compile(pattern: str) -> re.Pattern[str] | None:
    """A regex for ``pattern`` when it has ``{name}`` segments, else None (an exact path)."""
    if "{" not in pattern:
        return None
    out, pos = [], 0
    for match in _SEGMENT.finditer(pattern):
        out.append(re.escape(pattern[pos : match.start()]))
        out.append(".+" if match.group(2) == "path" else "[^/]+")
        pos = match.end()
    out.append(re.escape(pattern[pos:]))
    return re.compile("".join(out))


class RouteTable:
    """Route patterns (``METHOD /path/{name}`` or ``/path/{name:path}``) to values."""

    def __init__(self, entries: Iterable[tuple[str, Any]]) -> None:
        self._exact: dict[str, dict[str | None, Any]] = {}
        self._patterns: list[tuple[re.Pattern[str], str | None, Any]] = []
        for key, value in entries:
            method, _, pattern = key.strip().rpartition(" ")
            verb = method.strip().upper() or None
            canonical = _canonical(pattern)
            regex = _compile(canonical)
            if regex is None:
                self._exact.setdefault(canonical, {})[verb] = value
            else:
                self._patterns.append((regex, verb, value))

    def __bool__(self) -> bool:
        return bool(self._exact or self._patterns)

    def match(self, method: str, scope: Scope) -> Any:
        """The value of the first pattern any spelling of the request's path matches."""
        if method == "HEAD":
            method = "GET"
        path: str = scope.get("path", "")
        if not scope.get("root_path") and "//" not in path and path[-1:] != "/" and path[:1] == "/":
            return self._match(method, path)  # already canonical: no spellings to try
        for path in path_spellings(scope):
            found = self._match(method, path)
            if found is not None:
                return found
        return None

    def _match(self, method: str, path: str) -> Any:
        by_method = self._exact.get(path)
        if by_method is not None:
            found = by_method.get(method) or by_method.get(None)
            if found is not None:
                return found
        for regex, verb, value in self._patterns:
            if (verb is None or verb == method) and regex.fullmatch(path):
                return value
        return None
