"""The same small service in every framework of the matrix.

Routes (every framework):
- ``GET /ok``                 200 ``{"ok": true}``
- ``GET /items/{item_id}``    200 ``{"item_id": "<item_id>"}``
- ``GET /log``                logs one structlog event inside the handler, returns the request id
- ``GET /boom``               raises ``RuntimeError`` (an unhandled server error)
- ``GET /conflict``           409 "User already exists" in the framework's own idiom, header ``X-Conflict: yes``
- ``GET /domain``             raises ``UserAlreadyExists`` (a domain exception to map)
- ``GET /stream``             200, streamed in 3 chunks ``chunk-0\\n`` ...
Only GET is routed, so ``POST /ok`` is a 405; anything else is a 404.
FastAPI also has ``GET /validate?n=<int>`` (a 422 on bad input).

Apps are built by ``build(name)`` each time; nothing is shared between tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import structlog

import buttress

FRAMEWORKS = ("raw", "starlette", "fastapi", "litestar", "django", "quart")
SECRET = "secret-token-123"


class UserAlreadyExists(Exception):
    """A domain error an app maps to 409."""


class SpecificUserAlreadyExists(UserAlreadyExists):
    """A subclass: mapping the base class maps this too."""


def _log_in_handler() -> dict[str, Any]:
    structlog.get_logger("app").info("handler", marker="inside")
    return {"request_id": buttress.get_request_id()}


async def _chunks() -> AsyncIterator[bytes]:
    for i in range(3):
        yield f"chunk-{i}\n".encode()
        await asyncio.sleep(0)


def _boom() -> None:
    password = SECRET  # a local a production log must never show
    raise RuntimeError(f"boom with {len(password)} chars")


# --- raw ASGI ---------------------------------------------------------------------------


def raw_app() -> Any:
    from starlette.exceptions import HTTPException

    async def send_json(
        send: Any, status: int, body: bytes, headers: list[Any] | None = None
    ) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), *(headers or [])],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        path = scope["path"]
        known = {"/ok", "/log", "/boom", "/conflict", "/domain", "/stream"}
        if not (path in known or (path.startswith("/items/") and path.count("/") == 2)):
            await send(
                {
                    "type": "http.response.start",
                    "status": 404,
                    "headers": [(b"content-type", b"text/plain")],
                }
            )
            await send({"type": "http.response.body", "body": b"Not Found"})
            return
        if scope["method"] != "GET":
            await send(
                {
                    "type": "http.response.start",
                    "status": 405,
                    "headers": [(b"content-type", b"text/plain"), (b"allow", b"GET")],
                }
            )
            await send({"type": "http.response.body", "body": b"Method Not Allowed"})
            return
        if path == "/ok":
            await send_json(send, 200, b'{"ok":true}')
        elif path.startswith("/items/"):
            import json

            await send_json(send, 200, json.dumps({"item_id": path[7:]}).encode())
        elif path == "/log":
            import json

            await send_json(send, 200, json.dumps(_log_in_handler()).encode())
        elif path == "/boom":
            _boom()
        elif path == "/conflict":
            raise HTTPException(409, "User already exists", headers={"X-Conflict": "yes"})
        elif path == "/domain":
            raise UserAlreadyExists("User 7 already exists")
        elif path == "/stream":
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/plain")],
                }
            )
            async for chunk in _chunks():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})

    return app


# --- Starlette and FastAPI --------------------------------------------------------------


def starlette_app() -> Any:
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    async def ok(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    async def item(request: Request) -> JSONResponse:
        return JSONResponse({"item_id": request.path_params["item_id"]})

    async def log(request: Request) -> JSONResponse:
        return JSONResponse(_log_in_handler())

    async def boom(request: Request) -> JSONResponse:
        _boom()
        raise AssertionError

    async def conflict(request: Request) -> JSONResponse:
        raise HTTPException(409, "User already exists", headers={"X-Conflict": "yes"})

    async def domain(request: Request) -> JSONResponse:
        raise UserAlreadyExists("User 7 already exists")

    async def stream(request: Request) -> StreamingResponse:
        return StreamingResponse(_chunks(), media_type="text/plain")

    return Starlette(
        routes=[
            Route("/ok", ok),
            Route("/items/{item_id}", item),
            Route("/log", log),
            Route("/boom", boom),
            Route("/conflict", conflict),
            Route("/domain", domain),
            Route("/stream", stream),
        ]
    )


def fastapi_app() -> Any:
    from fastapi import APIRouter, FastAPI, HTTPException
    from fastapi.responses import StreamingResponse

    app = FastAPI()
    items = APIRouter(prefix="/items")

    @app.get("/ok")
    async def ok() -> dict[str, bool]:
        return {"ok": True}

    @items.get("/{item_id}")
    async def item(item_id: str) -> dict[str, str]:
        return {"item_id": item_id}

    @app.get("/log")
    async def log() -> dict[str, Any]:
        return _log_in_handler()

    @app.get("/boom")
    async def boom() -> None:
        _boom()

    @app.get("/conflict")
    async def conflict() -> None:
        raise HTTPException(409, "User already exists", headers={"X-Conflict": "yes"})

    @app.get("/domain")
    async def domain() -> None:
        raise UserAlreadyExists("User 7 already exists")

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        return StreamingResponse(_chunks(), media_type="text/plain")

    @app.get("/validate")
    async def validate(n: int) -> dict[str, int]:
        return {"n": n}

    app.include_router(items)
    return app


# --- Litestar ---------------------------------------------------------------------------


def litestar_app() -> Any:
    from litestar import Litestar, get
    from litestar.exceptions import HTTPException
    from litestar.response import Stream

    try:
        from litestar.params import FromPath
    except ImportError:  # Litestar before 2.12: an annotated Parameter() is the same
        from typing import Annotated, TypeVar

        from litestar.params import Parameter

        T = TypeVar("T")
        FromPath = Annotated[T, Parameter()]  # type: ignore[misc,valid-type]

    @get("/ok")
    async def ok() -> dict[str, bool]:
        return {"ok": True}

    @get("/items/{item_id:str}")
    async def item(item_id: FromPath[str]) -> dict[str, str]:
        return {"item_id": item_id}

    @get("/log")
    async def log() -> dict[str, Any]:
        return _log_in_handler()

    @get("/boom")
    async def boom() -> None:
        _boom()

    @get("/conflict")
    async def conflict() -> None:
        raise HTTPException(
            status_code=409, detail="User already exists", headers={"X-Conflict": "yes"}
        )

    @get("/domain")
    async def domain() -> None:
        raise UserAlreadyExists("User 7 already exists")

    @get("/stream")
    async def stream() -> Stream:
        return Stream(_chunks(), media_type="text/plain")

    # This module uses postponed annotations, so Litestar needs the names it resolves.
    return Litestar(
        route_handlers=[ok, item, log, boom, conflict, domain, stream],
        logging_config=None,
        signature_namespace={"Stream": Stream, "FromPath": FromPath, "Any": Any},
    )


# --- Django -----------------------------------------------------------------------------

_django_ready = False


def _setup_django() -> None:
    global _django_ready
    if _django_ready:
        return
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            DEBUG=False,
            SECRET_KEY="test-only-not-secret",
            ALLOWED_HOSTS=["*"],
            ROOT_URLCONF="tests.django_urls",
            MIDDLEWARE=["buttress.adapters.DjangoMiddleware"],
            INSTALLED_APPS=[],
            USE_TZ=True,
            LOGGING_CONFIG=None,
        )
    django.setup()
    _django_ready = True


def django_app() -> Any:
    _setup_django()
    from django.core.handlers.asgi import ASGIHandler

    return ASGIHandler()


# --- Quart ------------------------------------------------------------------------------


def quart_app() -> Any:
    from quart import Quart, Response

    app = Quart(__name__)

    @app.get("/ok")
    async def ok() -> Any:
        return {"ok": True}

    @app.get("/items/<item_id>")
    async def item(item_id: str) -> Any:
        return {"item_id": item_id}

    @app.get("/log")
    async def log() -> Any:
        return _log_in_handler()

    @app.get("/boom")
    async def boom() -> Any:
        _boom()

    @app.get("/conflict")
    async def conflict() -> Any:
        return Response(
            "User already exists",
            status=409,
            headers={"X-Conflict": "yes", "Content-Type": "text/plain"},
        )

    @app.get("/domain")
    async def domain() -> Any:
        raise UserAlreadyExists("User 7 already exists")

    @app.get("/stream")
    async def stream() -> Any:
        return _chunks(), 200, {"Content-Type": "text/plain"}

    return app


BUILDERS: dict[str, Callable[[], Any]] = {
    "raw": raw_app,
    "starlette": starlette_app,
    "fastapi": fastapi_app,
    "litestar": litestar_app,
    "django": django_app,
    "quart": quart_app,
}


def build(name: str) -> Any:
    """A fresh app of framework ``name`` with the routes above."""
    return BUILDERS[name]()


# --- routing shapes for the route-template resolver (tests/test_routes.py) ----------------


def fastapi_nested_app() -> Any:
    """FastAPI with nested prefixed routers and a mounted FastAPI sub-app.

    ``GET /api/v1/users/{user_id}`` (router ``/users`` in router ``/v1`` included at ``/api``),
    ``GET /plain/{x}``, ``GET /sub/things/{thing_id}`` (a sub-app mounted at ``/sub`` whose
    router has the prefix ``/things``).
    """
    from fastapi import APIRouter, FastAPI

    app = FastAPI()
    users = APIRouter(prefix="/users")

    @users.get("/{user_id}")
    async def user(user_id: str) -> dict[str, str]:
        return {"user_id": user_id}

    v1 = APIRouter(prefix="/v1")
    v1.include_router(users)
    app.include_router(v1, prefix="/api")

    @app.get("/plain/{x}")
    async def plain(x: str) -> dict[str, str]:
        return {"x": x}

    sub = FastAPI()
    things = APIRouter(prefix="/things")

    @things.get("/{thing_id}")
    async def thing(thing_id: str) -> dict[str, str]:
        return {"thing_id": thing_id}

    sub.include_router(things)
    app.mount("/sub", sub)
    return app


def starlette_mounted_app() -> Any:
    """Starlette with nested mounts: ``GET /a/{x}``, ``GET /m/n/{id}``; ``/m/...`` else 404.

    ``/raw/...`` is a plain ASGI app (``raw_app``) mounted at ``/raw``.
    """
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route, Router

    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hello")

    inner = Router(routes=[Route("/{id}", hello)])
    return Starlette(
        routes=[
            Route("/a/{x}", hello),
            Mount("/m", routes=[Mount("/n", app=inner)]),
            Mount("/raw", app=raw_app()),
        ]
    )
