"""The example service on Litestar, wrapped by buttress.

Run:  uvicorn examples.litestar_app:app     (or: buttress run examples.litestar_app:app)
Try:  curl -i localhost:8000/items/42      curl -i localhost:8000/boom      curl localhost:8000/metrics
"""

from litestar import Litestar, get
from litestar.params import FromPath

import buttress

# No ``from __future__ import annotations`` here: Litestar reads the handlers' annotations.


@get("/")
async def index() -> dict[str, str]:
    return {"service": "example", "framework": "litestar"}


@get("/items/{item_id:str}")
async def item(item_id: FromPath[str]) -> dict[str, str]:
    return {"item_id": item_id}


@get("/boom")
async def boom() -> None:
    raise RuntimeError("the example failed on purpose")


# logging_config=None: buttress configures logging, Litestar should not add its own.
service = Litestar(route_handlers=[index, item, boom], logging_config=None)

app = buttress.wrap(service, rate_limits={"/items/{item_id}": "10/minute"})
