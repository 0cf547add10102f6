"""The service behind ``buttress demo``: a small Starlette app with the whole stack on.

It needs no external service: rate limits live in memory, Sentry is on only when
``SENTRY_DSN`` is set, and the flaky dependency behind ``/flaky`` is simulated. Settings
from the environment win over the demo's defaults, so ``BUTTRESS_ENV=production
buttress demo`` shows the JSON logs production would write.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from buttress._asgi import ASGIApp

__all__ = ["DEMO_CURLS", "DEMO_DEFAULTS", "demo_app"]

DEMO_DEFAULTS: dict[str, Any] = {
    "env": "development",
    "rate_limits": {"/items/{item_id}": "5/10seconds"},
    "rate_limit_storage": "memory://",
}

DEMO_CURLS: list[str] = [
    "curl -i {base}/                          # a request id on every response",
    "curl -i {base}/items/42                  # 6 times within 10 s: the 6th is a 429",
    "curl -i {base}/boom                      # an unhandled error: a JSON 500",
    "curl -i '{base}/slow?seconds=0.5'        # a slow request in the latency histogram",
    "curl -i {base}/flaky                     # a dependency failing twice, retried",
    "curl -i '{base}/flaky?failures=5'        # retries run out: a JSON 500",
    "curl -s {base}/metrics | grep -E 'http_|retries_total'",
]

_SLOW_MAX = 5.0


def _service(registry: Any) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from buttress.retry import transient

    @transient(attempts=3, wait_min=0.05, wait_max=0.5, name="demo.inventory", registry=registry)
    async def inventory(item: str, failures_left: list[int]) -> dict[str, Any]:
        await asyncio.sleep(0.01)  # the network round trip
        if failures_left[0] > 0:
            failures_left[0] -= 1
            raise ConnectionError("inventory service: connection refused")
        return {"item": item, "in_stock": 7}

    async def index(request: Request) -> JSONResponse:
        return JSONResponse({"service": "buttress demo", "try": [*_paths()]})

    async def item(request: Request) -> JSONResponse:
        return JSONResponse({"item_id": request.path_params["item_id"]})

    async def boom(request: Request) -> JSONResponse:
        secret = "demo-password"  # noqa: F841, S105 - development tracebacks show locals
        raise RuntimeError("the demo failed on purpose")

    async def slow(request: Request) -> JSONResponse:
        seconds = _number(request.query_params.get("seconds"), 1.0)
        await asyncio.sleep(min(max(seconds, 0.0), _SLOW_MAX))
        return JSONResponse({"slept": min(max(seconds, 0.0), _SLOW_MAX)})

    async def flaky(request: Request) -> JSONResponse:
        failures = int(_number(request.query_params.get("failures"), 2))
        return JSONResponse(await inventory("widget", [min(max(failures, 0), 10)]))

    return Starlette(
        routes=[
            Route("/", index),
            Route("/items/{item_id}", item),
            Route("/boom", boom),
            Route("/slow", slow),
            Route("/flaky", flaky),
        ]
    )


def _paths() -> list[str]:
    return ["/items/42", "/boom", "/slow?seconds=0.5", "/flaky", "/flaky?failures=5", "/metrics"]


def _number(raw: str | None, default: float) -> float:
    try:
        return float(raw) if raw is not None else default
    except ValueError:
        return default


def demo_app(**overrides: Any) -> ASGIApp:
    """The demo service wrapped by ``buttress.wrap``; the environment wins over the defaults."""
    import buttress
    from buttress._registry import make_registry
    from buttress.config import PREFIX

    defaults = {k: v for k, v in DEMO_DEFAULTS.items() if PREFIX + k.upper() not in os.environ}
    # One registry for the HTTP metrics and retries_total, so /metrics shows both.
    registry = overrides.pop("registry", None) or make_registry()
    return buttress.wrap(_service(registry), registry=registry, **{**defaults, **overrides})
