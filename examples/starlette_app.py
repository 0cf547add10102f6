"""The example service on Starlette, wrapped by buttress.

Run:  uvicorn examples.starlette_app:app    (or: buttress run examples.starlette_app:app)
Try:  curl -i localhost:8000/items/42      curl -i localhost:8000/boom      curl localhost:8000/metrics
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import buttress


async def index(request: Request) -> JSONResponse:
    return JSONResponse({"service": "example", "framework": "starlette"})


async def item(request: Request) -> JSONResponse:
    return JSONResponse({"item_id": request.path_params["item_id"]})


async def boom(request: Request) -> JSONResponse:
    raise RuntimeError("the example failed on purpose")


service = Starlette(
    routes=[Route("/", index), Route("/items/{item_id}", item), Route("/boom", boom)]
)

app = buttress.wrap(service, rate_limits={"/items/{item_id}": "10/minute"})
