"""Real-shaped apps that bring their own logging, for server subprocesses.

``LOGGING_APP`` picks one; each module-level ``app`` is already wrapped by buttress (JSON
logs unless ``BUTTRESS_ENV`` says otherwise):

- ``raw``: a raw ASGI app. ``/ok`` answers; ``/log`` logs through the standard library;
  ``/warn`` calls ``warnings.warn``; ``/crash`` raises outside buttress's error layer, so
  the server logs the traceback itself.
- ``litestar``: Litestar with its default logging configuration; ``/log`` logs.
- ``django``: Django with ``DEBUG=True`` and its default logging; ``/missing`` is a 404.
- ``loguru``: the raw app, after loguru's ``InterceptHandler`` recipe at import.
- ``devmode``: Starlette; ``/boom`` raises in a frame whose local has a ``repr`` that waits
  for ``GATE_FILE`` to exist, which ``/ok`` creates: if the traceback is drawn on the event
  loop, ``/ok`` cannot run until the wait gives up.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import buttress

KIND = os.environ.get("LOGGING_APP", "raw")


async def _text(send: Any, body: bytes, status: int = 200) -> None:
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": body})


async def raw(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            kind = message["type"].rsplit(".", 1)[-1]
            await send({"type": f"lifespan.{kind}.complete"})
            if kind == "shutdown":
                return
    path = scope["path"]
    if path == "/log":
        logging.getLogger("myapp").warning("from the app", extra={"order": 7})
    elif path == "/warn":
        warnings.warn("old_api() is going away\nuse new_api()", UserWarning, stacklevel=1)
    await _text(send, b"ok")


async def _outside(scope: Any, receive: Any, send: Any) -> None:
    """``/crash`` raises before buttress sees the request (as a broken outer layer would)."""
    if scope["type"] == "http" and scope["path"] == "/crash":
        raise RuntimeError("server-side boom\nsecond line")
    await _stack(scope, receive, send)


def _litestar() -> Any:
    from litestar import Litestar, get

    @get("/log", sync_to_thread=False)
    def log() -> str:
        logging.getLogger("myapp").warning("from the app")
        return "ok"

    return Litestar(route_handlers=[log])


def _django() -> Any:
    import django
    from django.conf import settings

    settings.configure(
        DEBUG=True,
        SECRET_KEY="test-only-not-secret",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF="tests.django_urls",
        MIDDLEWARE=["buttress.adapters.DjangoMiddleware"],
        INSTALLED_APPS=[],
    )
    django.setup()
    from django.core.handlers.asgi import ASGIHandler

    return ASGIHandler()


def _intercept_with_loguru() -> None:
    """loguru's documented recipe: every standard-library record goes to loguru."""
    import inspect

    from loguru import logger

    class InterceptHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            level: str | int
            try:
                level = logger.level(record.levelname).name
            except ValueError:
                level = record.levelno
            frame, depth = inspect.currentframe(), 0
            while frame and (depth == 0 or frame.f_code.co_filename == logging.__file__):
                frame = frame.f_back
                depth += 1
            logger.opt(depth=depth, exception=record.exc_info).log(level, record.getMessage())

    logging.basicConfig(handlers=[InterceptHandler()], level=0, force=True)


class _Gate:
    """A local whose ``repr`` waits (up to 20 s) until ``/ok`` has been served."""

    def __repr__(self) -> str:
        gate = Path(os.environ["GATE_FILE"])
        deadline = time.monotonic() + 20
        while not gate.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        return "<gate opened by /ok>" if gate.exists() else "<gate never opened>"


def _devmode() -> Any:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    def fail(gate: _Gate) -> None:
        user_secret = "visible-in-development"  # noqa: F841 - a local the traceback shows
        raise RuntimeError("devmode boom")

    async def boom(request: Any) -> Any:
        fail(_Gate())

    def ok(request: Any) -> Any:  # a sync endpoint: Starlette runs it in a thread
        Path(os.environ["GATE_FILE"]).touch()
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/boom", boom), Route("/ok", ok)])


if KIND == "loguru":
    _intercept_with_loguru()
_apps = {"raw": lambda: raw, "loguru": lambda: raw, "litestar": _litestar, "django": _django}
_apps["devmode"] = _devmode
_stack = buttress.wrap(_apps[KIND]())
app = _outside
