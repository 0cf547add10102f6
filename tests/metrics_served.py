"""An app for server subprocesses: ``uvicorn tests.metrics_served:app --workers 2``.

The Starlette app of the matrix, plus ``GET /pid`` (the worker's process id), wrapped in
the whole buttress stack; settings come from ``BUTTRESS_*`` variables.
"""

from __future__ import annotations

import os

from starlette.requests import Request
from starlette.responses import PlainTextResponse

import buttress
from tests.apps import build


async def _pid(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(os.getpid()))


_app = build("starlette")
_app.add_route("/pid", _pid)
app = buttress.wrap(_app, configure_logging=False, access_log=False)
