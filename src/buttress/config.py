"""Settings for every buttress layer, read from ``BUTTRESS_*`` environment variables.

# Strategy: one frozen dataclass, one table of fields. Each field names its variable,
# its parser and a one-line help text; the README's configuration table is generated
# from (and tested against) the same table, so the docs cannot drift. Every bad
# variable is collected before raising, so one start-up shows every mistake at once.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import ipaddress
import json
import os
import re
import warnings
from collections.abc import Callable, Mapping
from typing import Any, Literal

__all__ = [
    "FIELDS",
    "ConfigError",
    "ConfigWarning",
    "Field",
    "Settings",
]

PREFIX = "BUTTRESS_"
#: ``BUTTRESS_*`` variables that are not settings: the CLI's hand-off and the test suite's Redis.
NOT_SETTINGS = frozenset({"BUTTRESS_RUN_APP", "BUTTRESS_TEST_REDIS_URL"})
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
FORWARDED_HEADERS = ("x-forwarded-for", "forwarded", "x-real-ip")
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(ValueError):
    """One or more settings are invalid; the message lists each, with a hint."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("Invalid buttress configuration:\n  " + "\n  ".join(problems))


class ConfigWarning(UserWarning):
    """A ``BUTTRESS_*`` variable that no setting reads (most likely a typo)."""


class _Invalid(ValueError):
    """Raised by a parser; the text says what is accepted."""


# --- parsers: str -> value, raising _Invalid with what is accepted ------------------------


def _bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    low = str(raw).strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise _Invalid("expected true or false (also 1/0, yes/no, on/off)")


def _choice(*choices: str, upper: bool = False) -> Callable[[str], str]:
    def parse(raw: Any) -> str:
        if not isinstance(raw, str):
            raise _Invalid("expected one of " + ", ".join(choices))
        value = raw.strip().upper() if upper else raw.strip().lower()
        if value not in choices:
            raise _Invalid("expected one of " + ", ".join(choices))
        return value

    return parse


def _optional_choice(*choices: str) -> Callable[[str], str | None]:
    inner = _choice(*choices)

    def parse(raw: Any) -> str | None:
        return inner(raw) if raw is not None and str(raw).strip() else None

    return parse


def _int_range(lo: int, hi: int) -> Callable[[str], int]:
    def parse(raw: Any) -> int:
        if isinstance(raw, (bool, float)):
            raise _Invalid(f"expected a whole number from {lo} to {hi}")
        try:
            value = int(raw.strip() if isinstance(raw, str) else raw)
        except (TypeError, ValueError):
            raise _Invalid(f"expected a whole number from {lo} to {hi}") from None
        if not lo <= value <= hi:
            raise _Invalid(f"expected a whole number from {lo} to {hi}")
        return value

    return parse


def _float_range(lo: float, hi: float, what: str = "a number") -> Callable[[str], float]:
    def parse(raw: Any) -> float:
        if isinstance(raw, bool):
            raise _Invalid(f"expected {what} from {lo:g} to {hi:g}")
        try:
            value = float(raw.strip() if isinstance(raw, str) else raw)
        except (TypeError, ValueError):
            raise _Invalid(f"expected {what} from {lo:g} to {hi:g}") from None
        if not lo <= value <= hi or value != value:
            raise _Invalid(f"expected {what} from {lo:g} to {hi:g}")
        return value

    return parse


def _str(raw: Any) -> str:
    return str(raw).strip()


def _secret(raw: Any) -> str | None:
    if raw is None:
        return None
    return str(raw).strip() or None


_METRIC_PREFIX = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def _namespace(raw: Any) -> str:
    value = str(raw).strip()
    if value and not _METRIC_PREFIX.fullmatch(value):
        raise _Invalid(
            "expected a metric name prefix: letters, digits and underscores, "
            "not starting with a digit, like 'shop_api'"
        )
    return value


def _token(raw: Any) -> str | None:
    value = _secret(raw)
    if value is not None:
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            raise _Invalid(
                "expected a token of latin-1 characters (it travels in a header)"
            ) from None
        if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in value):
            raise _Invalid("expected a token without spaces or control characters")
    return value


def _csv(raw: Any) -> tuple[str, ...]:
    if isinstance(raw, str):
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    return tuple(str(part).strip() for part in raw if str(part).strip())


def _paths(raw: Any) -> tuple[str, ...]:
    paths = _csv(raw)
    for path in paths:
        if not _PATTERN.fullmatch(path):
            raise _Invalid(f"{path!r} is not a path; write paths like '/metrics,/healthz'")
    return paths


def _methods(raw: Any) -> tuple[str, ...]:
    methods = tuple(m.upper() for m in _csv(raw))
    for method in methods:
        if not _METHOD.fullmatch(method):
            raise _Invalid(f"{method!r} is not an HTTP method; write them like 'OPTIONS,HEAD'")
    return methods


def _label_sources(raw: Any) -> dict[str, Any]:
    hint = """like '{"tenant": "request:X-Tenant", "cache": "response:X-Cache"}'"""
    out: dict[str, Any] = {}
    for name, source in _json_object(raw, hint).items():
        if not isinstance(name, str) or not _METRIC_PREFIX.fullmatch(name) or ":" in name:
            raise _Invalid(f"{name!r} is not a label name, {hint}")
        if name in ("method", "route", "status", "le", "quantile"):
            raise _Invalid(f"{name!r} is one of buttress' own labels, {hint}")
        if callable(source):
            out[name] = source
            continue
        kind, _, header = str(source).partition(":")
        if kind not in ("request", "response") or not _HEADER_TOKEN.fullmatch(header.strip()):
            raise _Invalid(
                f"source of {name!r} must be 'request:<Header>' or 'response:<Header>', {hint}"
            )
        out[name] = f"{kind}:{header.strip()}"
    return out


ACCESS_FIELDS = (
    "route",
    "status",
    "duration_ms",
    "user_agent",
    "response_bytes",
    "query",
    "http_version",
    "referer",
    "request_bytes",
)
#: What the access log writes unless ``BUTTRESS_ACCESS_LOG_FIELDS`` says otherwise.
ACCESS_DEFAULT_FIELDS = ACCESS_FIELDS[:5]


def _access_fields(raw: Any) -> tuple[str, ...]:
    fields = _csv(raw)
    unknown = [f for f in fields if f not in ACCESS_FIELDS]
    if unknown or not fields:
        raise _Invalid("expected comma-separated fields among " + ", ".join(ACCESS_FIELDS))
    return fields


def _path_or_empty(raw: Any) -> str:
    path = str(raw).strip()
    if path and (not path.startswith("/") or any(c.isspace() for c in path)):
        raise _Invalid("expected a path starting with '/' (or empty to disable)")
    return path


_HEADER_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _header_name(raw: Any) -> str:
    name = str(raw).strip()
    if not _HEADER_TOKEN.fullmatch(name):
        raise _Invalid("expected an HTTP header name such as 'X-Request-ID'")
    return name


def _networks(raw: Any) -> tuple[IPNetwork, ...]:
    nets = []
    for part in _csv([raw] if isinstance(raw, IPNetwork) else raw):
        try:
            nets.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise _Invalid(
                f"{part!r} is not an IP address or CIDR; write them like '10.0.0.0/8,127.0.0.1'"
            ) from None
    return tuple(nets)


def _buckets(raw: Any) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in _csv(raw))
    except (TypeError, ValueError):
        raise _Invalid("expected comma-separated seconds like '0.01,0.1,1,10'") from None
    if (
        not values
        or any(not 0 < v < float("inf") for v in values)  # NaN fails this too
        or list(values) != sorted(set(values))
    ):
        raise _Invalid("expected increasing positive seconds like '0.01,0.1,1,10'")
    return values


def _status_codes(raw: Any) -> frozenset[int]:
    codes: set[int] = set()
    hint = "expected status codes and ranges like '500-599' or '409,500-599'"
    if not isinstance(raw, str):
        if not all(isinstance(c, int) and 100 <= c <= 599 for c in raw):
            raise _Invalid(hint)
        return frozenset(raw)
    for part in _csv(raw):
        lo_s, _, hi_s = part.partition("-")
        try:
            lo = int(lo_s)
            hi = int(hi_s) if hi_s else lo
        except ValueError:
            raise _Invalid(hint) from None
        if not 100 <= lo <= hi <= 599:
            raise _Invalid(hint)
        codes.update(range(lo, hi + 1))
    return frozenset(codes)


def _json_object(raw: Any, hint: str) -> dict[Any, Any]:
    if isinstance(raw, Mapping):
        return dict(raw)
    if not isinstance(raw, str):
        raise _Invalid(f"expected a mapping or a JSON object, {hint}")
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        raise _Invalid(f"expected a JSON object, {hint}") from None
    if not isinstance(value, dict):
        raise _Invalid(f"expected a JSON object, {hint}")
    return value


def _exception_map(raw: Any) -> dict[type[BaseException], Any]:
    hint = """like '{"myapp.errors:UserAlreadyExists": 409}' or '{"myapp.errors:Gone": [410, "It is gone"]}'"""
    out: dict[type[BaseException], Any] = {}
    for path, value in _json_object(raw, hint).items():
        name = path if isinstance(path, str) else getattr(path, "__name__", repr(path))
        status = value[0] if isinstance(value, (list, tuple)) and len(value) == 2 else value
        if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
            raise _Invalid(
                f"status for {name!r} must be a number from 400 to 599 "
                f"(or [status, detail]), {hint}"
            )
        rule = (status, value[1]) if isinstance(value, (list, tuple)) else status
        if isinstance(path, str):
            out[_import_exception(path)] = rule
        elif isinstance(path, type) and issubclass(path, BaseException):
            out[path] = rule
        else:
            raise _Invalid(f"{path!r} is not an exception class, {hint}")
    return out


def _import_exception(path: str) -> type[BaseException]:
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise _Invalid(f"{path!r} is not an import path like 'myapp.errors:UserAlreadyExists'")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise _Invalid(f"cannot import {path!r}: {exc}") from None
    if not (isinstance(obj, type) and issubclass(obj, BaseException)):
        raise _Invalid(f"{path!r} is not an exception class")
    return obj


def _path_groups(raw: str) -> dict[str, str]:
    hint = """like '{"^/users/[0-9]+$": "/users/{id}"}'"""
    groups = _json_object(raw, hint)
    for pattern, template in groups.items():
        if not isinstance(template, str):
            raise _Invalid(f"template for {pattern!r} must be a string, {hint}")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise _Invalid(f"{pattern!r} is not a regular expression ({exc}), {hint}") from None
    return groups


def _rate_limit(raw: Any) -> str:
    value = str(raw).strip()
    if value:
        _check_limit(value)
    return value


def _check_limit(value: str) -> None:
    from limits import parse_many

    try:
        parse_many(value)
    except ValueError:
        raise _Invalid(
            f"{value!r} is not a rate limit; write it like '100/minute' or '10/second;1000/hour'"
        ) from None


_METHOD = re.compile(r"[A-Z]+")
_PATTERN = re.compile(r"/(?:[^{}\s]|\{[A-Za-z_][A-Za-z0-9_]*(?::[A-Za-z_]+)?\})*")


_COUNTS = ("all", "failures", "successes")


def _rate_limits(raw: Any) -> dict[str, Any]:
    hint = (
        """like '{"POST /auth/login": "10/minute", "/reports/{id}": "30/minute"}' or, per """
        """route, '{"limit": "10/minute", "shared": "auth", "cost": 2, "count": "failures"}'"""
    )
    limits_map = _json_object(raw, hint)
    out: dict[str, Any] = {}
    for key, value in limits_map.items():
        if not isinstance(key, str):
            raise _Invalid(f"{key!r} is not 'METHOD /path' or '/path', {hint}")
        method, _, pattern = key.strip().rpartition(" ")
        method = method.strip()
        if (method and not _METHOD.fullmatch(method.upper())) or not _PATTERN.fullmatch(pattern):
            raise _Invalid(f"{key!r} is not 'METHOD /path' or '/path', {hint}")
        out[f"{method.upper()} {pattern}" if method else pattern] = _route_limit(key, value, hint)
    return out


def _route_limit(key: str, value: Any, hint: str) -> Any:
    """One route's limit: a string, a callable of the client key (code), or an object."""
    if isinstance(value, str):
        _check_limit(value)
        return value
    if callable(value):
        return value
    if not isinstance(value, Mapping) or "limit" not in value:
        raise _Invalid(f"limit for {key!r} must be a string or an object with 'limit', {hint}")
    unknown = set(value) - {"limit", "shared", "cost", "count"}
    if unknown:
        raise _Invalid(f"limit for {key!r} has unknown keys {sorted(unknown)}, {hint}")
    if isinstance(value["limit"], str):
        _check_limit(value["limit"])
    elif not callable(value["limit"]):
        raise _Invalid(f"'limit' for {key!r} must be a string, {hint}")
    cost = value.get("cost", 1)
    if isinstance(cost, bool) or not isinstance(cost, int) or cost < 1:
        raise _Invalid(f"'cost' for {key!r} must be a whole number of at least 1, {hint}")
    if value.get("count", "all") not in _COUNTS:
        raise _Invalid(f"'count' for {key!r} must be one of {', '.join(_COUNTS)}, {hint}")
    shared = value.get("shared")
    if shared is not None and (not isinstance(shared, str) or not shared.strip()):
        raise _Invalid(f"'shared' for {key!r} must be a group name, {hint}")
    return dict(value)


def _rate_limit_key(raw: Any) -> Any:
    if callable(raw):
        return raw  # a (sync or async) callable of the scope, given in code
    value = str(raw).strip()
    if value == "ip" or (value.startswith("header:") and _HEADER_TOKEN.fullmatch(value[7:])):
        return value
    raise _Invalid(
        "expected 'ip' or 'header:<Name>' such as 'header:X-API-Key' (or, in code, a callable)"
    )


_STORAGE_SCHEMES = (
    "memory",
    "redis",
    "rediss",
    "redis+unix",
    "redis+sentinel",
    "redis+cluster",
    "memcached",
)


def _storage(raw: Any) -> str:
    value = str(raw).strip()
    scheme = value.partition("://")[0]
    if "://" not in value or scheme not in _STORAGE_SCHEMES:
        raise _Invalid(
            "expected a storage URI starting with " + ", ".join(f"{s}://" for s in _STORAGE_SCHEMES)
        )
    return value


# --- the table --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Field:
    """One setting: its variable, parser, default as written in the environment, and help."""

    name: str
    parse: Callable[[str], Any]
    default: str
    help: str
    secret: bool = False

    @property
    def env(self) -> str:
        return PREFIX + self.name.upper()


FIELDS: tuple[Field, ...] = (
    # foundation: context and logging
    Field(
        "env",
        _choice("production", "development"),
        "production",
        "`production` or `development` (console logs, rich tracebacks with locals).",
    ),
    Field(
        "log_level",
        _choice(*LOG_LEVELS, upper=True),
        "INFO",
        "Lowest level written, for structlog and the standard library alike.",
    ),
    Field(
        "log_format",
        _optional_choice("json", "console"),
        "",
        "`json` or `console`; empty means `json` in production, `console` in development.",
    ),
    Field(
        "configure_logging",
        _bool,
        "true",
        "Let `wrap()` call `configure_logging()`; false leaves logging to you.",
    ),
    Field("access_log", _bool, "true", "One access-log event per HTTP request."),
    Field(
        "access_log_exclude",
        _paths,
        "",
        "Comma-separated paths never access-logged; empty means the metrics path.",
    ),
    Field(
        "access_log_fields",
        _access_fields,
        "route,status,duration_ms,user_agent,response_bytes",
        "Access-log fields; add `query` (credentials masked), `http_version`, `referer`, "
        "`request_bytes`, or leave some out.",
    ),
    Field(
        "access_log_4xx_level",
        _choice("info", "warning"),
        "warning",
        "Level of access lines for 4xx answers (5xx are errors, the rest info).",
    ),
    Field(
        "request_id_header",
        _header_name,
        "X-Request-ID",
        "Header read for an incoming request id and echoed on every response.",
    ),
    Field(
        "request_id_in_request",
        _bool,
        "false",
        "Also put a generated request id into the request headers the app sees.",
    ),
    Field(
        "trusted_proxies",
        _networks,
        "",
        "Comma-separated IPs/CIDRs of your proxies; only their forwarding header is believed.",
    ),
    Field(
        "forwarded_header",
        _choice(*FORWARDED_HEADERS),
        "x-forwarded-for",
        "The one header your trusted proxies write: `x-forwarded-for`, `forwarded` or "
        "`x-real-ip`; any other is ignored.",
    ),
    # errors and Sentry
    Field(
        "errors",
        _bool,
        "true",
        'The error layer (`{"detail": ...}` contract, traceback logs, Sentry reports).',
    ),
    Field(
        "exception_map",
        _exception_map,
        "",
        """JSON object of exception import paths to statuses, e.g. `{"app.errors:Conflict": 409}`.""",
    ),
    Field(
        "error_body_limit",
        _int_range(0, 16 * 1024 * 1024),
        "65536",
        "Largest error body (bytes) buffered to normalize; larger ones pass unchanged.",
    ),
    Field(
        "error_format",
        _choice("detail", "problem"),
        "detail",
        '`detail` for `{"detail": ...}` or `problem` for RFC 9457 problem+json.',
    ),
    Field(
        "error_passthrough_json",
        _bool,
        "false",
        "Send error bodies that are already JSON unchanged (an API's own error contract).",
    ),
    Field(
        "error_report_budget",
        _int_range(0, 1_000_000),
        "10",
        "Reports (Sentry event and traceback log line) per minute for one error (exception "
        "type and route), in bursts of as many; 0 for no limit.",
    ),
    Field(
        "sentry_status_codes",
        _status_codes,
        "500-599",
        "Statuses reported to Sentry, e.g. `409,500-599`.",
    ),
    Field(
        "sentry_request_bodies",
        _int_range(0, 1024 * 1024),
        "0",
        "Attach JSON request bodies up to this many bytes to Sentry events (keys naming "
        "credentials filtered); 0 attaches none.",
    ),
    Field(
        "sentry_traces_sample_rate",
        _float_range(0.0, 1.0, "a rate"),
        "0",
        "Sentry performance tracing sample rate, 0 to 1.",
    ),
    # metrics
    Field("metrics", _bool, "true", "The Prometheus metrics layer."),
    Field(
        "metrics_path",
        _path_or_empty,
        "/metrics",
        "Path that serves the metrics; empty disables the endpoint.",
    ),
    Field(
        "metrics_token",
        _token,
        "",
        "When set, `/metrics` requires `Authorization: Bearer <token>`.",
        secret=True,
    ),
    Field("metrics_namespace", _namespace, "", "Prefix for every metric name."),
    Field(
        "metrics_buckets",
        _buckets,
        ",".join(f"{b:g}" for b in DEFAULT_BUCKETS),
        "Latency histogram buckets in seconds.",
    ),
    Field(
        "metrics_path_groups",
        _path_groups,
        "",
        """JSON object of regex to route template for apps without templates.""",
    ),
    Field(
        "metrics_max_routes",
        _int_range(1, 1_000_000),
        "1000",
        "Most distinct `route` label values; past it, `<other>`.",
    ),
    Field("metrics_group_status", _bool, "false", "Report `status` as `2xx`, `4xx`, ..."),
    Field(
        "metrics_skip_paths",
        _paths,
        "",
        "Comma-separated paths or patterns (`/health/{probe}`) never counted.",
    ),
    Field(
        "metrics_skip_methods",
        _methods,
        "",
        "Comma-separated methods never counted, e.g. `OPTIONS,HEAD`.",
    ),
    Field(
        "metrics_extra_labels",
        _label_sources,
        "",
        """JSON object of label to `request:<Header>` or `response:<Header>`, e.g. """
        """`{"tenant": "request:X-Tenant"}`; at most 50 values each.""",
    ),
    Field(
        "metrics_duration_status",
        _bool,
        "false",
        "Put the `status` label on the duration and size histograms too.",
    ),
    Field(
        "metrics_request_size",
        _bool,
        "false",
        "Add `http_request_size_bytes`, the request body bytes the app read.",
    ),
    # rate limiting
    Field(
        "rate_limit",
        _rate_limit,
        "",
        "Default limit for every request, e.g. `100/minute;2000/hour`; empty means none.",
    ),
    Field(
        "rate_limits",
        _rate_limits,
        "",
        """JSON object of `METHOD /pattern` or `/pattern` to limit.""",
    ),
    Field("rate_limit_key", _rate_limit_key, "ip", "`ip` or `header:<Name>` (falls back to ip)."),
    Field(
        "rate_limit_ip",
        _rate_limit,
        "",
        "With a header key: a limit per client IP applied too, so random keys cannot "
        "bypass limiting; empty means none.",
    ),
    Field(
        "rate_limit_key_secret",
        _secret,
        "",
        "Secret that keys the stored digest of header keys; set the same on every instance "
        "(empty: random per process for `memory://`, unkeyed for shared storage).",
        secret=True,
    ),
    Field(
        "rate_limit_ipv6_prefix",
        _int_range(32, 128),
        "64",
        "IPv6 clients are limited per network of this prefix length (one /64 is one client).",
    ),
    Field(
        "rate_limit_max_keys",
        _int_range(1_000, 100_000_000),
        "200000",
        "Most client keys `memory://` keeps; past it the oldest are evicted and counted.",
    ),
    Field(
        "rate_limit_strategy",
        _choice("fixed-window", "moving-window", "sliding-window-counter"),
        "sliding-window-counter",
        "`fixed-window`, `moving-window` or `sliding-window-counter`.",
    ),
    Field(
        "rate_limit_storage",
        _storage,
        "memory://",
        "`memory://`, `redis://`, `rediss://`, `redis+sentinel://`, `redis+cluster://`, "
        "`memcached://`.",
        secret=True,
    ),
    Field(
        "rate_limit_exempt",
        _paths,
        "",
        "Comma-separated paths never limited; empty means the metrics path.",
    ),
    Field(
        "rate_limit_allow", _csv, "", "Comma-separated IPs/CIDRs or keys that are never limited."
    ),
    Field(
        "rate_limit_headers", _bool, "true", "Send `RateLimit-*` headers on allowed responses too."
    ),
    Field(
        "rate_limit_header_style",
        _choice("ietf", "x", "both"),
        "ietf",
        "`ietf` (`RateLimit-Limit/Remaining/Reset`), `x` (`X-RateLimit-*`, reset as a Unix "
        "time) or `both`.",
    ),
    Field(
        "rate_limit_fail_open",
        _bool,
        "true",
        "When the storage is down, let requests pass (true) or answer 503 (false).",
    ),
    # retries
    Field("retry_attempts", _int_range(1, 100), "3", "Attempts made by `buttress.retry`."),
    Field(
        "retry_wait_min",
        _float_range(0.0, 3600.0, "seconds"),
        "0.5",
        "Shortest wait between retries, seconds.",
    ),
    Field(
        "retry_wait_max",
        _float_range(0.0, 3600.0, "seconds"),
        "4",
        "Longest wait between retries, seconds.",
    ),
)

_BY_NAME = {f.name: f for f in FIELDS}
_BY_ENV = {f.env: f for f in FIELDS}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every buttress setting; build it with ``Settings.from_env()``.

    Only ``wrap()`` and the CLI build one: each layer takes its own keyword options, and
    ``buttress.stack`` maps these settings onto them. Settings are not hashable (some
    values are mappings); compare them with ``==``.
    """

    __hash__ = None  # type: ignore[assignment]

    env: Literal["production", "development"]
    log_level: str
    log_format: Literal["json", "console"] | None
    configure_logging: bool
    access_log: bool
    access_log_exclude: tuple[str, ...]
    access_log_fields: tuple[str, ...]
    access_log_4xx_level: str
    request_id_header: str
    request_id_in_request: bool
    trusted_proxies: tuple[IPNetwork, ...]
    forwarded_header: str
    errors: bool
    exception_map: Mapping[type[BaseException], Any]  # status, or (status, detail)
    error_body_limit: int
    error_format: Literal["detail", "problem"]
    error_passthrough_json: bool
    error_report_budget: int
    sentry_status_codes: frozenset[int]
    sentry_request_bodies: int
    sentry_traces_sample_rate: float
    metrics: bool
    metrics_path: str
    metrics_token: str | None = dataclasses.field(repr=False)
    metrics_namespace: str
    metrics_buckets: tuple[float, ...]
    metrics_path_groups: Mapping[str, str]
    metrics_max_routes: int
    metrics_group_status: bool
    metrics_skip_paths: tuple[str, ...]
    metrics_skip_methods: tuple[str, ...]
    metrics_extra_labels: Mapping[str, Any]
    metrics_duration_status: bool
    metrics_request_size: bool
    rate_limit: str
    rate_limits: Mapping[str, Any]
    rate_limit_key: Any  # "ip", "header:<Name>", or a (sync or async) callable of the scope
    rate_limit_ip: str
    rate_limit_key_secret: str | None = dataclasses.field(repr=False)
    rate_limit_ipv6_prefix: int
    rate_limit_max_keys: int
    rate_limit_strategy: str
    rate_limit_storage: str = dataclasses.field(repr=False)
    rate_limit_exempt: tuple[str, ...]
    rate_limit_allow: tuple[str, ...]
    rate_limit_headers: bool
    rate_limit_header_style: str
    rate_limit_fail_open: bool
    retry_attempts: int
    retry_wait_min: float
    retry_wait_max: float

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read ``BUTTRESS_*`` variables from ``environ`` (default ``os.environ``).

        Keyword overrides win over the environment and may be parsed values or strings.
        Raises ``ConfigError`` naming every bad variable, its value and what is accepted.
        """
        env = os.environ if environ is None else environ
        problems: list[str] = []
        for key in overrides:
            if key not in _BY_NAME:
                close = difflib.get_close_matches(key, _BY_NAME, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                problems.append(f"unknown setting {key!r}{hint}")
        _warn_unknown(env)
        values: dict[str, Any] = {}
        for field in FIELDS:
            if field.name in overrides:
                value = overrides[field.name]
                try:
                    values[field.name] = field.parse(value)
                except _Invalid as exc:
                    problems.append(f"{field.name}={_shown(field, value)}: {exc}")
                continue
            raw = env.get(field.env)
            source = raw if raw is not None else field.default
            try:
                values[field.name] = field.parse(source)
            except _Invalid as exc:
                problems.append(f"{field.env}={_shown(field, source)}: {exc}")
        if problems:
            raise ConfigError(problems)
        _derive(values, problems, overrides)
        if problems:
            raise ConfigError(problems)
        return cls(**values)

    @property
    def development(self) -> bool:
        return self.env == "development"

    @property
    def effective_log_format(self) -> Literal["json", "console"]:
        if self.log_format is not None:
            return self.log_format
        return "console" if self.development else "json"

    def redacted(self) -> dict[str, str]:
        """Each setting's variable and value as text, secrets masked (for ``buttress config``)."""
        out: dict[str, str] = {}
        for field in FIELDS:
            value = getattr(self, field.name)
            if field.secret and value:
                text = _mask(str(value))
            elif isinstance(value, (tuple, frozenset)):
                text = ",".join(
                    str(v) for v in (sorted(value) if isinstance(value, frozenset) else value)
                )
            elif isinstance(value, Mapping):
                text = json.dumps({_qualname(k): v for k, v in value.items()})
            elif isinstance(value, bool):
                text = str(value).lower()
            elif value is None:
                text = ""
            else:
                text = str(value)
            out[field.env] = text
        return out


def _qualname(key: object) -> str:
    if isinstance(key, type):
        return f"{key.__module__}:{key.__qualname__}"
    return str(key)


_CREDENTIAL_PARAM = re.compile(
    r"(?i)(^|[?&;])([^=&;]*(?:pass|secret|token|key|auth)[^=&;]*)=[^&;#]*"
)


def mask_uri(value: str) -> str:
    """``value`` with every credential masked: the user info and secret-looking parameters.

    A storage URI keeps its scheme, host and path so the operator can see where it points:
    ``redis://u:p@ss@h:6379/0?password=x`` is shown as ``redis://***@h:6379/0?password=***``.
    """
    scheme, sep, rest = value.partition("://")
    if not sep:
        return "***"
    authority, slash, tail = rest.partition("/")
    query_at = authority.find("?")
    if query_at >= 0:  # no path: the query follows the authority directly
        authority, tail, slash = authority[:query_at], authority[query_at:] + slash + tail, ""
    if "@" in authority:
        authority = "***@" + authority.rpartition("@")[2]
    tail = _CREDENTIAL_PARAM.sub(lambda m: f"{m.group(1)}{m.group(2)}=***", tail)
    return f"{scheme}{sep}{authority}{slash}{tail}"


def _mask(value: str) -> str:
    return mask_uri(value) if "://" in value else "***"


def _shown(field: Field, value: Any) -> str:
    """How a bad value is quoted in a message: secrets masked."""
    if field.secret and value:
        return repr(_mask(str(value)))
    return repr(value)


def option(keyword: str, name: str, value: Any) -> Any:
    """``value`` given to a layer as ``keyword``, checked by the parser of setting ``name``.

    Layers take explicit keyword options; this validates them with the same parsers as
    the ``BUTTRESS_*`` variables, and the ``ConfigError`` names the keyword, not a variable.
    """
    field = _BY_NAME[name]
    try:
        return field.parse(value)
    except _Invalid as exc:
        raise ConfigError([f"{keyword}={_shown(field, value)}: {exc}"]) from None


def defaults() -> Settings:
    """The settings as documented, without reading the environment (for layer defaults)."""
    return Settings.from_env({})


def _derive(values: dict[str, Any], problems: list[str], overrides: Mapping[str, Any]) -> None:
    """Fill the defaults that depend on other settings; check settings against each other."""
    if values["retry_wait_min"] > values["retry_wait_max"]:
        lo = "retry_wait_min" if "retry_wait_min" in overrides else "BUTTRESS_RETRY_WAIT_MIN"
        hi = "retry_wait_max" if "retry_wait_max" in overrides else "BUTTRESS_RETRY_WAIT_MAX"
        problems.append(
            f"{lo}={values['retry_wait_min']!r} is above {hi}={values['retry_wait_max']!r}: "
            "expected the shortest wait to be at most the longest"
        )
    metrics_path = values["metrics_path"]
    default_exempt = (metrics_path,) if metrics_path else ()
    if not values["access_log_exclude"]:
        values["access_log_exclude"] = default_exempt
    if not values["rate_limit_exempt"]:
        values["rate_limit_exempt"] = default_exempt


def _warn_unknown(env: Mapping[str, str]) -> None:
    """Warn (``ConfigWarning``) about each ``BUTTRESS_*`` variable that no setting reads.

    Printed, the warning is its message alone: the default format would add a file name
    and the caller's source line, which tell an operator nothing about their variable.
    Filters, ``pytest.warns`` and ``logging.captureWarnings`` see an ordinary warning.
    """

    def message_alone(message: Warning | str, *_: Any, **__: Any) -> str:
        return f"{message}\n"

    for key in env:
        if key.startswith(PREFIX) and key not in _BY_ENV and key not in NOT_SETTINGS:
            close = difflib.get_close_matches(key, _BY_ENV, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            formatter = warnings.formatwarning
            warnings.formatwarning = message_alone
            try:
                warnings.warn(
                    f"{key} is not a buttress setting and is ignored{hint}",
                    ConfigWarning,
                    stacklevel=3,
                )
            finally:
                warnings.formatwarning = formatter


def markdown_table() -> str:
    """The README's configuration table, generated from ``FIELDS`` (a test compares them)."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for field in FIELDS:
        default = f"`{field.default}`" if field.default else "(empty)"
        meaning = field.help.replace("|", "\\|")
        rows.append(f"| `{field.env}` | {default} | {meaning} |")
    return "\n".join(rows)
