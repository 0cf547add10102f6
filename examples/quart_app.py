"""The example service on Quart, wrapped by buttress.

Run:  uvicorn examples.quart_app:app        (or: buttress run examples.quart_app:app)
Try:  curl -i localhost:8000/items/42      curl -i localhost:8000/boom      curl localhost:8000/metrics
"""

from __future__ import annotations

from typing import Any

from quart import Quart

import buttress

service = Quart(__name__)


@service.get("/")
async def index() -> Any:
    return {"service": "example", "framework": "quart"}


@service.get("/items/<item_id>")
async def item(item_id: str) -> Any:
    return {"item_id": item_id}


@service.get("/boom")
async def boom() -> Any:
    raise RuntimeError("the example failed on purpose")


app = buttress.wrap(service, rate_limits={"/items/{item_id}": "10/minute"})
