"""The soak test's server: a Starlette app with mixed routes, wrapped with the whole stack.

Settings come from the environment (the test sets the Redis storage and the limits).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

import buttress


async def ok(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


async def item(request: Request) -> JSONResponse:
    return JSONResponse({"item_id": request.path_params["item_id"]})


async def limited(request: Request) -> JSONResponse:
    return JSONResponse({"limited": False})


async def boom(request: Request) -> JSONResponse:
    raise RuntimeError("soak boom")


async def stream(request: Request) -> StreamingResponse:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(20):
            yield f"chunk-{i}\n".encode() * 50
            await asyncio.sleep(0.001)

    return StreamingResponse(chunks(), media_type="text/plain")


app = buttress.wrap(
    Starlette(
        routes=[
            Route("/ok", ok),
            Route("/items/{item_id}", item),
            Route("/limited", limited),
            Route("/boom", boom),
            Route("/stream", stream),
        ]
    )
)
