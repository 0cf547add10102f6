"""The example service as a raw ASGI app, wrapped by buttress.

Run:  uvicorn examples.raw_app:app          (or: buttress run examples.raw_app:app)
Try:  curl -i localhost:8000/items/42      curl -i localhost:8000/boom      curl localhost:8000/metrics

Routes: ``GET /`` a greeting, ``GET /items/{item_id}`` one item (rate limited to 10 per
minute per client), ``GET /boom`` an unhandled error answered as ``{"detail": ...}``.
A raw app has no route templates, so ``route`` labels come from ``metrics_path_groups``.
"""

from __future__ import annotations

import json
from typing import Any

import buttress


async def service(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":  # nothing to set up or tear down
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/":
        status, body = 200, {"service": "example", "framework": "raw"}
    elif path.startswith("/items/") and path.count("/") == 2:
        status, body = 200, {"item_id": path.removeprefix("/items/")}
    elif path == "/boom":
        raise RuntimeError("the example failed on purpose")
    else:
        status, body = 404, {"detail": "Not Found"}
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


app = buttress.wrap(
    service,
    rate_limits={"/items/{item_id}": "10/minute"},
    metrics_path_groups={"^/items/[^/]+$": "/items/{item_id}"},
)
