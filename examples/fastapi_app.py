"""The example service on FastAPI, wrapped by buttress.

Run:  uvicorn examples.fastapi_app:app      (or: buttress run examples.fastapi_app:app)
Try:  curl -i localhost:8000/items/42      curl -i localhost:8000/boom      curl localhost:8000/metrics
"""

from __future__ import annotations

from fastapi import FastAPI

import buttress

service = FastAPI(title="buttress example")


@service.get("/")
async def index() -> dict[str, str]:
    return {"service": "example", "framework": "fastapi"}


@service.get("/items/{item_id}")
async def item(item_id: str) -> dict[str, str]:
    return {"item_id": item_id}


@service.get("/boom")
async def boom() -> None:
    raise RuntimeError("the example failed on purpose")


app = buttress.wrap(service, rate_limits={"/items/{item_id}": "10/minute"})
