"""The fault tests' server: a Starlette app with the whole stack, settings from ``BUTTRESS_*``.

Routes: ``/ok``, ``/limited`` (the test gives it a small limit), ``/boom`` (raises) and
``/stream-boom`` (sends one chunk of a streamed 200, then raises).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

import buttress


async def ok(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


async def limited(request: Request) -> JSONResponse:
    return JSONResponse({"limited": False})


async def boom(request: Request) -> JSONResponse:
    raise RuntimeError("faults boom")


async def stream_boom(request: Request) -> StreamingResponse:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"first\n"
        raise RuntimeError("mid-stream boom")

    return StreamingResponse(chunks(), media_type="text/plain")


app = buttress.wrap(
    Starlette(
        routes=[
            Route("/ok", ok),
            Route("/limited", limited),
            Route("/boom", boom),
            Route("/stream-boom", stream_boom),
        ]
    )
)
