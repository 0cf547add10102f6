"""The apps the benchmark measures: bare apps, buttress stacks and the peer stack.

Every builder returns a fresh app, so no two configurations share state. The peer stack
is made of the installed peer libraries (the ``bench`` extra), never copies of their code;
the only hand-written peer part is the structlog access-log middleware below, because
that is what teams write themselves (there is no popular package for it).
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any

import structlog

DSN = "http://public@127.0.0.1:9/1"  # never contacted: the transport drops every envelope
NEVER_TRIPS = "1000000/second"
ITEM_PATH = "/items/42"


# --- bare apps --------------------------------------------------------------------------


def starlette_app(*, peer: bool = False, limit: str = NEVER_TRIPS) -> Any:
    """A Starlette app with a small JSON endpoint and a route that raises."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def item(request: Any) -> Any:
        return JSONResponse({"item_id": request.path_params["item_id"], "ok": True})

    async def boom(request: Any) -> Any:
        raise RuntimeError("boom")

    routes = [Route("/items/{item_id}", item), Route("/boom", boom)]
    if not peer:
        return Starlette(routes=routes)
    return _peer_starlette(routes, limit)


def fastapi_app(*, peer: bool = False, limit: str = NEVER_TRIPS) -> Any:
    """The same service in FastAPI."""
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: str) -> dict[str, Any]:
        return {"item_id": item_id, "ok": True}

    @app.get("/boom")
    async def boom() -> dict[str, Any]:
        raise RuntimeError("boom")

    if peer:
        _peer_fastapi(app, limit)
    return app


# --- buttress ---------------------------------------------------------------------------


def devnull() -> Any:
    return open(os.devnull, "w")


def buttress_settings(**overrides: Any) -> Any:
    """Settings of the measured stack: JSON access log, metrics, errors, a limiter."""
    from buttress import Settings

    values: dict[str, Any] = {
        "configure_logging": False,
        "log_format": "json",
        "rate_limit": NEVER_TRIPS,
        "rate_limit_storage": "memory://",
    }
    values.update(overrides)
    return Settings.from_env(environ={}, **values)


def configure_buttress_logging(settings: Any) -> None:
    import buttress
    from buttress.stack import logging_options

    buttress.configure_logging(**logging_options(settings), stream=devnull())


def buttress_stack(app: Any, settings: Any) -> Any:
    """``wrap()`` with a private metrics registry (several stacks live in one process)."""
    from prometheus_client import CollectorRegistry

    import buttress

    return buttress.wrap(app, settings, registry=CollectorRegistry(auto_describe=True))


def buttress_layer(name: str, app: Any, settings: Any) -> Any:
    """One buttress layer alone around ``app``."""
    import buttress
    from buttress import stack

    if name == "context":
        return buttress.RequestContextMiddleware(app, **stack.context_options(settings))
    if name == "metrics":
        from prometheus_client import CollectorRegistry

        return buttress.MetricsMiddleware(
            app, registry=CollectorRegistry(), **stack.metrics_options(settings)
        )
    if name == "errors":
        return buttress.ErrorMiddleware(app, **stack.error_options(settings))
    if name == "ratelimit":
        return buttress.RateLimitMiddleware(app, **stack.rate_limit_options(settings))
    raise ValueError(f"unknown buttress layer {name!r}")


# --- Sentry -----------------------------------------------------------------------------


@functools.cache
def drop_transport() -> type:
    """A sentry-sdk Transport subclass that drops every envelope (``sentry_sdk.init``
    accepts a Transport subclass as ``transport=``)."""
    from sentry_sdk.transport import Transport

    class DropTransport(Transport):
        dropped = 0

        def capture_envelope(self, envelope: Any) -> None:
            DropTransport.dropped += 1

    return DropTransport


def init_buttress_sentry(settings: Any) -> dict[str, Any]:
    """Initialise Sentry the way buttress does, then swap in the dropping transport.

    The DSN goes in through ``SENTRY_DSN``, as a deployment would set it; ``transport``
    is passed when ``init_sentry`` forwards options to ``sentry_sdk.init``, and the live
    client's transport is replaced either way. Returns what happened, for the report.
    """
    import inspect

    import sentry_sdk

    from buttress import init_sentry

    os.environ["SENTRY_DSN"] = DSN
    kwargs: dict[str, Any] = {}
    params = inspect.signature(init_sentry).parameters.values()
    if any(p.name == "transport" or p.kind is p.VAR_KEYWORD for p in params):
        kwargs["transport"] = drop_transport()
    from buttress.stack import sentry_options

    result = init_sentry(**{**sentry_options(settings), **kwargs})
    client = sentry_sdk.get_client()
    active = client.is_active()
    if active:
        client.transport = drop_transport()(client.options)
    return {
        "init_sentry_returned": repr(result),
        "client_active": active,
        "integrations": sorted(getattr(client, "integrations", {}) or {}),
    }


def init_peer_sentry() -> dict[str, Any]:
    """sentry-sdk as its docs show it: a DSN, default integrations, tracing off."""
    import sentry_sdk

    sentry_sdk.init(dsn=DSN, transport=drop_transport())
    client = sentry_sdk.get_client()
    return {
        "client_active": client.is_active(),
        "integrations": sorted(getattr(client, "integrations", {}) or {}),
    }


# --- the peer stack ---------------------------------------------------------------------


class StructlogAccessLogMiddleware:
    """A hand-written pure-ASGI JSON access log, the kind teams write with structlog.

    Binds the correlation id, method and path, and logs one JSON line per request with
    the status and duration; exceptions are logged with their traceback and re-raised.
    """

    def __init__(self, app: Any, *, stream: Any = None) -> None:
        self.app = app
        self.logger = structlog.wrap_logger(
            structlog.PrintLogger(stream or devnull()),
            processors=[
                structlog.contextvars.merge_contextvars,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.processors.dict_tracebacks,
                structlog.processors.JSONRenderer(),
            ],
            wrapper_class=structlog.make_filtering_bound_logger(20),
        )

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from asgi_correlation_id import correlation_id

        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            request_id=correlation_id.get(),
            method=scope["method"],
            path=scope["path"],
            client_ip=scope["client"][0] if scope.get("client") else None,
        )
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            self.logger.exception("request failed")
            raise
        finally:
            self.logger.info(
                "request",
                status=status,
                duration_ms=round((time.perf_counter() - start) * 1000, 3),
            )


def _limiter(limit: str) -> Any:
    from slowapi import Limiter
    from slowapi.util import get_remote_address

    return Limiter(key_func=get_remote_address, default_limits=[limit], storage_uri="memory://")


def slowapi_middleware() -> tuple[Any, str]:
    """slowapi's pure ASGI middleware when the installed version has it."""
    import slowapi.middleware as m

    cls = getattr(m, "SlowAPIASGIMiddleware", None)
    if cls is not None:
        return cls, "SlowAPIASGIMiddleware"
    return m.SlowAPIMiddleware, "SlowAPIMiddleware (BaseHTTPMiddleware)"


def _peer_starlette(routes: list[Any], limit: str) -> Any:
    from asgi_correlation_id import CorrelationIdMiddleware
    from slowapi import _rate_limit_exceeded_handler
    from slowapi.errors import RateLimitExceeded
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.routing import Route
    from starlette_exporter import PrometheusMiddleware, handle_metrics

    slow, _ = slowapi_middleware()
    app = Starlette(
        routes=[*routes, Route("/metrics", handle_metrics)],
        middleware=[
            Middleware(CorrelationIdMiddleware),
            Middleware(StructlogAccessLogMiddleware),
            Middleware(PrometheusMiddleware),
            Middleware(slow),
        ],
        exception_handlers={RateLimitExceeded: _rate_limit_exceeded_handler},
    )
    app.state.limiter = _limiter(limit)
    return app


def _peer_fastapi(app: Any, limit: str) -> None:
    from asgi_correlation_id import CorrelationIdMiddleware
    from prometheus_client import CollectorRegistry
    from prometheus_fastapi_instrumentator import Instrumentator
    from slowapi import _rate_limit_exceeded_handler
    from slowapi.errors import RateLimitExceeded

    slow, _ = slowapi_middleware()
    app.state.limiter = _limiter(limit)
    app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)
    # add_middleware prepends: the last added is the outermost.
    app.add_middleware(slow)
    Instrumentator(registry=CollectorRegistry()).instrument(app).expose(app)
    app.add_middleware(StructlogAccessLogMiddleware)
    app.add_middleware(CorrelationIdMiddleware)


def peer_layer(name: str) -> Any:
    """One peer middleware alone around a bare Starlette app."""
    from starlette.middleware import Middleware

    app = starlette_app()
    if name == "asgi-correlation-id":
        from asgi_correlation_id import CorrelationIdMiddleware

        app.user_middleware.insert(0, Middleware(CorrelationIdMiddleware))
    elif name == "structlog-access-log":
        from asgi_correlation_id import CorrelationIdMiddleware

        app.user_middleware.insert(0, Middleware(StructlogAccessLogMiddleware))
    elif name == "starlette-exporter":
        from starlette_exporter import PrometheusMiddleware

        app.user_middleware.insert(0, Middleware(PrometheusMiddleware))
    elif name == "slowapi":
        from slowapi import _rate_limit_exceeded_handler
        from slowapi.errors import RateLimitExceeded

        slow, _ = slowapi_middleware()
        app.state.limiter = _limiter(NEVER_TRIPS)
        app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)
        app.user_middleware.insert(0, Middleware(slow))
    else:
        raise ValueError(f"unknown peer layer {name!r}")
    return app
