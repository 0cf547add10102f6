"""``buttress routes``: what buttress will do with each route an app declares, without serving.

For every route (``_routewalk``) and method: the metrics label, the rate limit that
applies and the client key it is counted under, whether it is exempt, whether it is
access-logged; then every configured limit pattern and exemption that matches no route,
a misconfiguration nothing else reports (the exit status is 1, for CI).

# Strategy: decide with the layers' own parts, so the answer is what happens at run time.
# The rate limiter's route tables (``RouteTable``: every spelling of a path the frameworks
# route alike, ``HEAD`` as ``GET``) are asked about a path of each route (its template:
# ``{x}`` fits any parameter). They come from a ``RateLimitMiddleware`` built from the
# settings, or, when the app already is a buttress stack (``app = buttress.wrap(app)``),
# from the layers in that stack, with the options its own ``wrap()`` was given. A pattern
# "matches" a route when some request to the route would be charged to it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from typing import Any

from buttress._paths import RouteTable
from buttress._routewalk import DeclaredRoute, find_framework, routes_of
from buttress.config import Settings

__all__ = ["Policy", "build_report", "render"]

_ANY = "*"  # a method no pattern names: any method a route without methods takes
_SERVES = "serves the metrics"
_SHADOWED = "shadowed by the metrics endpoint"


async def _nothing(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover
    """The app under the rate limiter built for the listing; never called."""


@dataclasses.dataclass
class Policy:
    """What the layers do with a request path: the parts of the stack that decide it."""

    source: str
    limiter: Any  # RateLimitMiddleware
    exempt: list[str]
    access_log: bool
    exclude: frozenset[str]
    metrics: bool
    metrics_path: str
    skip: RouteTable
    skip_methods: frozenset[str]

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        """The policy ``wrap()`` builds from ``settings`` (the rate limiter with ``memory://``)."""
        from buttress.ratelimit import RateLimitMiddleware
        from buttress.stack import rate_limit_options

        options = {**rate_limit_options(settings), "storage": "memory://"}
        return cls(
            source="settings from the environment",
            limiter=RateLimitMiddleware(_nothing, **options),
            exempt=list(settings.rate_limit_exempt),
            access_log=settings.access_log,
            exclude=frozenset(settings.access_log_exclude),
            metrics=settings.metrics,
            metrics_path=settings.metrics_path,
            skip=RouteTable((p, True) for p in settings.metrics_skip_paths),
            skip_methods=frozenset(settings.metrics_skip_methods),
        )

    @classmethod
    def from_stack(cls, stack: Any) -> Policy:
        """The policy of an app that already is a buttress stack, read from its layers."""
        from buttress.context import RequestContextMiddleware
        from buttress.metrics import MetricsMiddleware
        from buttress.ratelimit import RateLimitMiddleware

        layers: dict[type, Any] = {}
        node = stack
        for _ in range(32):
            if node is None:
                break
            for kind in (RequestContextMiddleware, MetricsMiddleware, RateLimitMiddleware):
                if isinstance(node, kind):
                    layers.setdefault(kind, node)
            node = getattr(node, "app", None)
        context, metrics = layers[RequestContextMiddleware], layers.get(MetricsMiddleware)
        limiter = layers[RateLimitMiddleware]
        return cls(
            source="settings given to the app's own wrap()",
            limiter=limiter,
            exempt=_table_texts(limiter._exempt) if limiter._exempt else [],
            access_log=context._access is not None,
            exclude=context._exclude,
            metrics=metrics is not None,
            metrics_path=metrics._path if metrics is not None else "",
            skip=(metrics._skip if metrics is not None else None) or RouteTable(()),
            skip_methods=metrics._skip_methods if metrics is not None else frozenset(),
        )

    @property
    def limit_patterns(self) -> list[str]:
        """The route patterns given a limit (the default and the per-IP limit are not)."""
        return [r.label for r in self.limiter.rules if r.label not in ("*", "ip")]

    @property
    def key(self) -> str:
        """The client key limits are counted under, as configured."""
        keys = self.limiter.keys
        if keys._header is not None:
            return f"header:{keys._header.decode('latin-1')} (else ip)"
        if keys._func is not None:
            func = keys._func
            return f"{getattr(func, '__module__', '?')}:{getattr(func, '__qualname__', func)}"
        return "ip"


def _table_texts(table: RouteTable) -> list[str]:
    """The patterns of a ``RouteTable`` as text (a parameter shown as ``{param}``)."""
    out = [
        f"{verb} {path}" if verb else path
        for path, by_method in table._exact.items()
        for verb in by_method
    ]
    for regex, verb, _ in table._patterns:
        text = regex.pattern.replace("[^/]+", "{param}").replace(".+", "{param:path}")
        text = re.sub(r"\\(.)", r"\1", text)
        out.append(f"{verb} {text}" if verb else text)
    return out


def _scope(method: str, path: str) -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "root_path": ""}


def _rule_json(policy: Policy, rule: Any) -> dict[str, Any]:
    """A rule (or None: no limit) as the listing shows it."""
    limiter = policy.limiter
    ip_rule = limiter._ip_rule
    out: dict[str, Any] = {
        "exempt": False,
        "pattern": None,
        "limits": [],
        "key": policy.key,
        "ip_limits": [str(x.item) for x in ip_rule.limits] if ip_rule is not None else [],
    }
    if rule is None:
        return out
    if rule.label != "*":
        out["pattern"] = rule.label
    if rule.dynamic is not None:
        out["limits"] = ["decided per key by a callable"]
    else:
        out["limits"] = [str(x.item) for x in rule.limits]
    if rule.name.startswith("shared:"):
        out["shared"] = rule.name.removeprefix("shared:")
    if rule.cost != 1:
        out["cost"] = rule.cost
    if rule.count != "all":
        out["count"] = rule.count
    if len(rule.chain) > 1:
        out["plus_default"] = [str(x.item) for x in rule.chain[1].limits]
    return out


def _decide(policy: Policy, route: DeclaredRoute, method: str) -> dict[str, Any]:
    """What the stack does with a request of ``method`` to a path of ``route``."""
    scope = _scope(method, route.sample)
    if route.kind == "websocket":  # every layer passes websocket scopes through
        return {"metrics": "not counted", "rate_limit": None, "access_log": "no"}
    limiter = policy.limiter
    metrics = _metrics(policy, route, method, scope)
    rate: dict[str, Any]
    if metrics in (_SERVES, _SHADOWED):  # answered by the metrics layer, outside the limiter
        rate = {"exempt": True, "reason": "served by the metrics layer, before the rate limiter"}
    elif limiter._exempt and limiter._exempt.match(method, scope):
        rate = {"exempt": True, "reason": "rate_limit_exempt"}
    else:
        rule = None if limiter._default_only else limiter._routes.match(method, scope)
        rate = _rule_json(policy, rule if rule is not None else limiter._default)
    return {
        "metrics": metrics,
        "rate_limit": rate,
        "access_log": _access_log(policy, route),
    }


def _metrics(policy: Policy, route: DeclaredRoute, method: str, scope: dict[str, Any]) -> str:
    if not policy.metrics:
        return "off"
    if policy.metrics_path and route.template == policy.metrics_path:
        return _SERVES if route.framework == "buttress" else _SHADOWED
    if (policy.skip and policy.skip.match(method, scope)) or method in policy.skip_methods:
        return "not counted"
    return "counted"


def _access_log(policy: Policy, route: DeclaredRoute) -> str:
    if not policy.access_log:
        return "off"
    if route.template in policy.exclude:
        return "no"
    if "{" in route.template and any(route.fits(path) for path in policy.exclude):
        return "some paths"
    return "yes"


def _verb(pattern: str) -> tuple[str | None, str]:
    method, _, path = pattern.strip().rpartition(" ")
    return (method.strip().upper() or None), "/" + re.sub(r"/{2,}", "/", path).strip("/")


def _matches(pattern: str, routes: Iterable[DeclaredRoute]) -> bool:
    """Whether some request to some route would be charged to (or exempted by) ``pattern``."""
    table = RouteTable([(pattern, True)])
    verb, path = _verb(pattern)
    for route in routes:
        if route.kind != "http":
            continue
        for method in [verb] if verb else (route.methods or [_ANY]):
            if route.methods is not None and method not in route.methods:
                continue
            if table.match(method, _scope(method, route.sample)):
                return True
            effective = "GET" if method == "HEAD" else method
            if (verb is None or verb == effective) and route.fits(path):
                return True  # the pattern names some of the route's paths (``/items/42``)
    return False


def _methods(policy: Policy, route: DeclaredRoute) -> list[str]:
    if route.methods is not None:
        return list(route.methods)
    named = {v for v, _ in map(_verb, [*policy.limit_patterns, *policy.exempt]) if v}
    return [_ANY, *sorted(named)]


def build_report(app: Any, policy: Policy) -> dict[str, Any]:
    """The listing as plain data (what ``--json`` prints); ``exit`` is the status to end with."""
    framework, inner = find_framework(app)
    declared = routes_of(framework, inner)
    notes: list[str] = []
    routes = list(declared or ())
    if policy.metrics and policy.metrics_path:
        routes.insert(0, DeclaredRoute(("GET", "HEAD"), policy.metrics_path, "", "buttress"))
    rows: list[dict[str, Any]] = []
    for route in routes:
        grouped: dict[str, tuple[list[str], dict[str, Any]]] = {}
        for method in _methods(policy, route):
            decision = _decide(policy, route, method)
            key = repr(sorted(decision.items()))
            grouped.setdefault(key, ([], decision))[0].append(method)
        for methods, decision in grouped.values():
            if _ANY in methods:
                methods = [_ANY]  # the named methods that fare the same need no row of their own
            counted = decision["metrics"] == "counted"
            rows.append(
                {
                    "methods": methods,
                    "template": route.template,
                    "framework": route.framework,
                    "kind": route.kind,
                    "metrics_label": route.label if counted else None,
                    **decision,
                }
            )
        if decision["metrics"] == _SHADOWED:
            notes.append(
                f"{route.template} is served by buttress' metrics endpoint, not by the app; "
                "set BUTTRESS_METRICS_PATH to another path to reach the app's route."
            )
    patterns = policy.limit_patterns
    unmatched: dict[str, list[str]] = {"rate_limits": [], "exempt": []}
    unverifiable: list[str] = []
    if declared is None:
        unverifiable = [*patterns, *(p for p in policy.exempt if not _matches(p, routes))]
        notes.append(
            "a raw ASGI app declares no routes to read; its requests are labelled by "
            "BUTTRESS_METRICS_PATH_GROUPS (else <unmatched>), and limit patterns cannot be "
            "checked against routes."
        )
    else:
        unmatched["rate_limits"] = [p for p in patterns if not _matches(p, routes)]
        unmatched["exempt"] = [p for p in policy.exempt if not _matches(p, routes)]
    if policy.limiter._exempt_when is not None:
        notes.append("exempt_when (given in code) may exempt more requests than shown.")
    if policy.limiter.keys._allow_nets or policy.limiter.keys._allow_keys:
        notes.append("clients on BUTTRESS_RATE_LIMIT_ALLOW are never limited.")
    return {
        "framework": framework,
        "settings": policy.source,
        "key": policy.key,
        "routes": rows,
        "unmatched": unmatched,
        "unverifiable": unverifiable,
        "notes": notes,
        "exit": 1 if unmatched["rate_limits"] or unmatched["exempt"] else 0,
    }


def _limit_text(rate: dict[str, Any] | None) -> str:
    if rate is None:
        return "- (websocket)"
    if rate.get("exempt"):
        return "exempt" if rate["reason"] == "rate_limit_exempt" else "none (metrics layer)"
    limits = "; ".join(rate["limits"]) or "none"
    where = f" ({rate['pattern']})" if rate["pattern"] else (" (default)" if rate["limits"] else "")
    extra = [
        f"{name} {rate[name]}" for name in ("shared", "cost", "count") if rate.get(name) is not None
    ]
    if rate.get("plus_default"):
        extra.append("and the default " + "; ".join(rate["plus_default"]))
    if rate["ip_limits"]:
        extra.append("and per IP " + "; ".join(rate["ip_limits"]))
    return limits + where + "".join(f", {e}" for e in extra)


def render(report: dict[str, Any], console: Any) -> None:
    """Print the listing as a table that fits the console's width, then what matched nothing."""
    from rich.markup import escape
    from rich.table import Table

    rows = report["routes"]
    mixed = len({row["framework"] for row in rows} - {"buttress"}) > 1
    table = Table(title=f"routes of the {report['framework']} app", show_lines=False)
    table.add_column("method", style="cyan", overflow="fold")
    table.add_column("route", style="bold", overflow="fold")
    if mixed:  # a mount of another framework's app; else the title says it
        table.add_column("framework", style="dim", overflow="fold")
    for name in ("metrics label", "rate limit", "access log"):
        table.add_column(name, overflow="fold")
    for row in rows:
        label = row["metrics_label"] if row["metrics_label"] is not None else row["metrics"]
        method = ", ".join(row["methods"]) + (" (ws)" if row["kind"] == "websocket" else "")
        cells = [method, row["template"], *([row["framework"]] if mixed else [])]
        cells += [label, _limit_text(row["rate_limit"]), row["access_log"]]
        table.add_row(*(escape(str(c)) for c in cells))
    console.print(table)
    console.print(
        f"{escape(report['settings'])}; limits are counted per client key: {escape(report['key'])}"
    )
    for kind, what in (("rate_limits", "limit pattern"), ("exempt", "exemption")):
        for pattern in report["unmatched"][kind]:
            console.print(
                f"[red]{what} {escape(pattern)!r} matches no route[/red]: check its path "
                "and method against the routes above (a typo here limits nothing).",
                soft_wrap=False,
            )
    for pattern in report["unverifiable"]:
        console.print(f"[yellow]pattern {escape(pattern)!r} cannot be checked[/yellow]")
    for note in report["notes"]:
        console.print(f"note: {escape(note)}")
