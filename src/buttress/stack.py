"""``wrap()``: the whole buttress stack around any ASGI 3 app, in the one right order.

Outermost first:

1. ``RequestContextMiddleware``: the request id, bound log context and the access log. It
   is outside everything so that every request, including the ones an inner layer rejects
   (429) or crashes on (500), carries the id and is logged once with its final status.
2. ``MetricsMiddleware``: serves ``/metrics`` and counts the final status the client got,
   so the 500 from the error layer and the 429 from the rate limiter are both counted.
3. ``ErrorMiddleware``: turns exceptions and non-JSON error responses into the
   ``{"detail": ...}`` contract and reports server errors to Sentry.
4. ``RateLimitMiddleware``: decides before the app runs; its 429 already speaks the
   contract, and a storage outage never reaches the app as an exception.
"""

from __future__ import annotations

from typing import Any

from buttress._asgi import ASGIApp
from buttress.config import Settings

__all__ = ["is_stack", "wrap"]

_STACK_MARK = "_buttress_stack"


def wrap(app: Any, settings: Settings | None = None, **overrides: Any) -> ASGIApp:
    """Return ``app`` wrapped in every buttress layer that ``settings`` enables.

    ``overrides`` are ``Settings`` fields (``rate_limit="10/minute"``) or layer options
    (``registry=`` a prometheus ``CollectorRegistry``, ``exception_map={Exc: 409}``).
    """
    from buttress.adapters import install_adapters
    from buttress.context import RequestContextMiddleware
    from buttress.errors import ErrorMiddleware
    from buttress.logs import configure_logging
    from buttress.metrics import MetricsMiddleware, make_registry
    from buttress.ratelimit import RateLimitMiddleware
    from buttress.sentry import init_sentry

    registry = overrides.pop("registry", None)
    if settings is None:
        settings = Settings.from_env(**overrides)
    elif overrides:
        settings = Settings.from_env(**{**_as_overrides(settings), **overrides})
    if settings.configure_logging:
        configure_logging(settings)
    init_sentry(settings)
    install_adapters(app)
    if settings.development:
        from buttress.devmode import print_startup_summary

        print_startup_summary(settings)

    if registry is None and settings.metrics:
        registry = make_registry()  # one registry for every layer's metrics of this stack

    stack: ASGIApp = app
    stack = RateLimitMiddleware(stack, settings=settings, registry=registry)
    stack = ErrorMiddleware(stack, settings=settings)
    if settings.metrics:
        stack = MetricsMiddleware(stack, settings=settings, registry=registry)
    outer = RequestContextMiddleware(stack, settings=settings)
    setattr(outer, _STACK_MARK, True)
    return outer


def is_stack(app: Any) -> bool:
    """Whether ``app`` is already what ``wrap()`` returns (so it is not wrapped twice)."""
    return getattr(app, _STACK_MARK, False) is True


def _as_overrides(settings: Settings) -> dict[str, Any]:
    import dataclasses

    return {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}
