"""buttress.retry around a flaky dependency, inside a Starlette service wrapped by buttress.

Run:  uvicorn examples.retry_app:app        (or: buttress run examples.retry_app:app)
Try:  curl -i localhost:8000/prices/42                 the dependency fails twice, then answers
      curl -i 'localhost:8000/prices/42?failures=9'    retries run out: a JSON 500
      curl -s localhost:8000/metrics | grep retries_total

The retry wraps the call to the dependency, never the client's request: the request body is
already read, the handler may have done things that must not happen twice, and replaying
whole requests multiplies the load on a dependency that is already struggling. Each retry
is a ``retrying`` warning with the request id, a ``retries_total`` sample and a Sentry
breadcrumb; when the attempts run out, the original ``ConnectionError`` reaches the error
layer, which answers ``{"detail": "Internal server error"}`` and reports it to Sentry.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import buttress
from buttress.metrics import make_registry
from buttress.retry import transient

# One registry for the HTTP metrics and retries_total, so /metrics shows both.
registry = make_registry()


class PriceService:
    """Stands in for a remote service: each lookup fails ``failures`` times first."""

    async def price(self, item_id: str, attempts_left: list[int]) -> float:
        if attempts_left[0] > 0:
            attempts_left[0] -= 1
            raise ConnectionError("price service: connection refused")
        return 9.99 + len(item_id)


prices = PriceService()


@transient(
    on=(ConnectionError, TimeoutError), attempts=3, wait_min=0.05, wait_max=0.5, registry=registry
)
async def fetch_price(item_id: str, attempts_left: list[int]) -> float:
    return await prices.price(item_id, attempts_left)


async def index(request: Request) -> JSONResponse:
    return JSONResponse({"service": "example", "framework": "starlette+retry"})


async def price(request: Request) -> JSONResponse:
    raw = request.query_params.get("failures", "2")
    failures = min(int(raw), 10) if raw.isdigit() else 2
    item_id = request.path_params["item_id"]
    value = await fetch_price(item_id, [failures])
    return JSONResponse({"item_id": item_id, "price": value})


service = Starlette(routes=[Route("/", index), Route("/prices/{item_id}", price)])

app = buttress.wrap(service, registry=registry)
