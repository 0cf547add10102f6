"""``wrap()``: the whole buttress stack around any ASGI 3 app, in the one right order.

Outermost first:

1. ``RequestContextMiddleware``: the request id, bound log context, the request record and
   the access log. It is outside everything so that every request, including the ones an
   inner layer rejects (429) or crashes on (500), carries the id and is logged once with
   its final status.
2. ``MetricsMiddleware``: serves ``/metrics`` and counts the final status the client got,
   so the 500 from the error layer and the 429 from the rate limiter are both counted.
3. ``ErrorMiddleware``: turns exceptions and non-JSON error responses into the
   ``{"detail": ...}`` contract and reports server errors to Sentry.
4. ``RateLimitMiddleware``: decides before the app runs; its 429 already speaks the
   contract, and a storage outage never reaches the app as an exception.

# Strategy: settings flow one way. ``wrap()`` (and the CLI) are the only places that read
# the environment: ``Settings.from_env`` validates every ``BUTTRESS_*`` variable at once,
# and the functions below map the settings onto each layer's keyword options. A layer
# used alone takes the same options from code and never reads the environment.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import structlog

from buttress._asgi import ASGIApp
from buttress.config import Settings

__all__ = [
    "context_options",
    "error_options",
    "is_stack",
    "logging_options",
    "metrics_options",
    "rate_limit_options",
    "sentry_options",
    "wrap",
]

_STACK_MARK = "_buttress_stack"


def context_options(s: Settings) -> dict[str, Any]:
    """``RequestContextMiddleware`` options from settings."""
    return {
        "request_id_header": s.request_id_header,
        "id_in_request": s.request_id_in_request,
        "trusted_proxies": s.trusted_proxies,
        "forwarded_header": s.forwarded_header,
        "access_log": s.access_log,
        "access_log_exclude": s.access_log_exclude,
        "access_log_fields": s.access_log_fields,
        "access_log_4xx_level": s.access_log_4xx_level,
    }


def metrics_options(s: Settings) -> dict[str, Any]:
    """``MetricsMiddleware`` options from settings."""
    return {
        "namespace": s.metrics_namespace,
        "buckets": s.metrics_buckets,
        "path": s.metrics_path,
        "token": s.metrics_token,
        "max_routes": s.metrics_max_routes,
        "path_groups": s.metrics_path_groups,
        "group_status": s.metrics_group_status,
        "skip_paths": s.metrics_skip_paths,
        "skip_methods": s.metrics_skip_methods,
        "extra_labels": s.metrics_extra_labels,
        "duration_status": s.metrics_duration_status,
        "request_size": s.metrics_request_size,
    }


def error_options(s: Settings) -> dict[str, Any]:
    """``ErrorMiddleware`` options from settings."""
    return {
        "exception_map": s.exception_map,
        "error_format": s.error_format,
        "body_limit": s.error_body_limit,
        "report_statuses": s.sentry_status_codes,
        "report_budget": s.error_report_budget,
        "namespace": s.metrics_namespace,
        "secret_headers": _secret_headers(s),
        "passthrough_json": s.error_passthrough_json,
        "request_bodies": s.sentry_request_bodies,
    }


def _secret_headers(s: Settings) -> tuple[str, ...]:
    """Header names whose values never reach Sentry or a log: the rate-limit key header."""
    key = s.rate_limit_key
    if isinstance(key, str) and key.startswith("header:"):
        return (key[7:],)
    return ()


def rate_limit_options(s: Settings) -> dict[str, Any]:
    """``RateLimitMiddleware`` options from settings."""
    return {
        "limits": s.rate_limits,
        "default": s.rate_limit,
        "key": s.rate_limit_key,
        "ip_limit": s.rate_limit_ip,
        "key_secret": s.rate_limit_key_secret,
        "ipv6_prefix": s.rate_limit_ipv6_prefix,
        "max_keys": s.rate_limit_max_keys,
        "storage": s.rate_limit_storage,
        "strategy": s.rate_limit_strategy,
        "headers": s.rate_limit_headers,
        "header_style": s.rate_limit_header_style,
        "fail_open": s.rate_limit_fail_open,
        "exempt": s.rate_limit_exempt,
        "allow": s.rate_limit_allow,
        "trusted_proxies": s.trusted_proxies,
        "forwarded_header": s.forwarded_header,
        "namespace": s.metrics_namespace,
    }


def logging_options(s: Settings) -> dict[str, Any]:
    """``configure_logging`` options from settings."""
    return {
        "level": s.log_level,
        "log_format": s.effective_log_format,
        "show_locals": s.development,
    }


def sentry_options(s: Settings) -> dict[str, Any]:
    """``init_sentry`` options from settings (and ``SENTRY_DSN``)."""
    return {
        "dsn": os.environ.get("SENTRY_DSN") or None,
        "status_codes": s.sentry_status_codes,
        "exception_map": s.exception_map,
        "traces_sample_rate": s.sentry_traces_sample_rate,
        "secret_headers": _secret_headers(s),
    }


def wrap(app: Any, settings: Settings | None = None, **overrides: Any) -> ASGIApp:
    """Return ``app`` wrapped in every buttress layer that ``settings`` enables.

    ``overrides`` are ``Settings`` fields (``rate_limit="10/minute"``) or ``registry=`` (a
    prometheus ``CollectorRegistry`` shared by every layer's metrics).
    """
    from buttress._registry import make_registry
    from buttress.adapters import install_adapters
    from buttress.context import RequestContextMiddleware
    from buttress.errors import ErrorMiddleware
    from buttress.logs import configure_logging
    from buttress.metrics import MetricsMiddleware
    from buttress.ratelimit import RateLimitMiddleware
    from buttress.retry import configure_retries
    from buttress.sentry import init_sentry

    registry = overrides.pop("registry", None)
    if settings is None:
        settings = Settings.from_env(**overrides)
    elif overrides:
        settings = Settings.from_env(**{**_as_overrides(settings), **overrides})
    if settings.configure_logging:
        configure_logging(**logging_options(settings))
    _warn_trust_everything(settings)
    init_sentry(**sentry_options(settings))
    configure_retries(
        attempts=settings.retry_attempts,
        wait_min=settings.retry_wait_min,
        wait_max=settings.retry_wait_max,
        namespace=settings.metrics_namespace,
    )
    install_adapters(app)
    if settings.development:
        from buttress.devmode import print_startup_summary

        print_startup_summary(settings)

    if registry is None and settings.metrics:
        registry = make_registry()  # one registry for every layer's metrics of this stack

    stack: ASGIApp = app
    stack = RateLimitMiddleware(stack, registry=registry, **rate_limit_options(settings))
    if settings.errors:
        stack = ErrorMiddleware(stack, registry=registry, **error_options(settings))
    if settings.metrics:
        stack = MetricsMiddleware(stack, registry=registry, **metrics_options(settings))
    outer = RequestContextMiddleware(stack, **context_options(settings))
    setattr(outer, _STACK_MARK, True)
    return outer


def _warn_trust_everything(settings: Settings) -> None:
    """A trusted-proxy network that holds every address lets any client choose its IP."""
    for net in settings.trusted_proxies:
        if net.prefixlen == 0:
            structlog.get_logger("buttress").warning(
                "trusted_proxies_trust_everyone",
                network=str(net),
                message=(
                    f"BUTTRESS_TRUSTED_PROXIES contains {net}, which holds every address: "
                    "any client can set its own IP (and rate-limit key) through "
                    f"{settings.forwarded_header}. List only your proxies' addresses."
                ),
            )


def is_stack(app: Any) -> bool:
    """Whether ``app`` is already what ``wrap()`` returns (so it is not wrapped twice)."""
    return getattr(app, _STACK_MARK, False) is True


def _as_overrides(settings: Settings) -> dict[str, Any]:
    return {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}
