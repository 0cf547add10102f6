"""Apps shaped like the ones people run: everything they bring of their own, and buttress on top.

A FastAPI service in the full-stack-template shape (versioned nested routers, CORS, its
own ``sentry_sdk.init`` with tracing, static files, ``/docs``) and a Quart app built from
blueprints, each wrapped unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sentry_sdk
from prometheus_client import CollectorRegistry

import buttress
from tests.conftest import LogCapture, client_for
from tests.sentry_ingest import SentryIngest


def fastapi_service(static_dir: Path) -> Any:
    from fastapi import APIRouter, FastAPI, HTTPException
    from fastapi.middleware.cors import CORSMiddleware
    from fastapi.staticfiles import StaticFiles

    users = APIRouter(prefix="/users", tags=["users"])

    @users.get("/{user_id}")
    async def read_user(user_id: int) -> dict[str, int]:
        if user_id == 0:
            raise HTTPException(404, "User not found")
        return {"id": user_id}

    @users.post("/{user_id}/charge")
    async def charge(user_id: int) -> None:
        raise ConnectionError("payment gateway: connection refused")

    v1 = APIRouter(prefix="/api/v1")
    v1.include_router(users)
    app = FastAPI(title="shop")
    app.include_router(v1)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=["https://shop.example"],
        allow_methods=["*"],
        expose_headers=["X-Request-ID"],
    )
    app.mount("/static", StaticFiles(directory=static_dir), name="static")
    return app


async def test_fastapi_template_shaped_service(
    tmp_path: Path, sentry_ingest: SentryIngest, logs: LogCapture
) -> None:
    """Nested routers, CORS, static files, /docs and the app's own Sentry: one label, one event, one transaction each."""
    (tmp_path / "logo.txt").write_text("logo", encoding="utf-8")
    # The app sets Sentry up itself, with tracing and sentry's default integrations.
    sentry_sdk.init(dsn=sentry_ingest.dsn, traces_sample_rate=1.0)
    registry = CollectorRegistry()
    app = buttress.wrap(fastapi_service(tmp_path), configure_logging=False, registry=registry)
    origin = {"Origin": "https://shop.example"}
    async with client_for(app) as client:
        user = await client.get("/api/v1/users/7", headers=origin)
        missing = await client.get("/api/v1/users/0")
        failed = await client.post("/api/v1/users/7/charge")
        static = await client.get("/static/logo.txt")
        docs = await client.get("/docs")
        schema = await client.get("/openapi.json")
    sentry_sdk.flush(timeout=10)
    assert (
        user.status_code == 200 and user.headers["access-control-expose-headers"] == "X-Request-ID"
    )
    assert (missing.status_code, missing.json()) == (404, {"detail": "User not found"})
    assert (failed.status_code, failed.json()) == (500, {"detail": "Internal server error"})
    assert static.text == "logo" and docs.status_code == 200 and schema.status_code == 200
    routes = [line["route"] for line in logs.access]
    assert routes == [
        "/api/v1/users/{user_id}",
        "/api/v1/users/{user_id}",
        "/api/v1/users/{user_id}/charge",
        "/static/{path}",
        "/docs",
        "/openapi.json",
    ]
    (event,) = sentry_ingest.events
    assert event["tags"]["request_id"] == failed.headers["x-request-id"]
    assert event["exception"]["values"][-1]["type"] == "ConnectionError"
    names = sorted(t["transaction"] for t in sentry_ingest.transactions)
    assert len(names) == 6  # one transaction per request, never two
    assert "/api/v1/users/{user_id}/charge" in names
    assert len(logs.events("unhandled exception")) == 1


def quart_blueprint_app() -> Any:
    from quart import Blueprint, Quart, abort

    shop = Blueprint("shop", __name__, url_prefix="/shop")

    @shop.get("/orders/<int:order_id>")
    async def order(order_id: int) -> dict[str, int]:
        if order_id == 0:
            abort(404)
        return {"order": order_id}

    @shop.get("/orders/<int:order_id>/invoice")
    async def invoice(order_id: int) -> dict[str, int]:
        raise RuntimeError("invoice service down")

    admin = Blueprint("admin", __name__, url_prefix="/admin")

    @admin.get("/stats")
    async def stats() -> dict[str, int]:
        return {"orders": 3}

    app = Quart(__name__)
    app.register_blueprint(shop)
    app.register_blueprint(admin)
    return app


@pytest.mark.parametrize("prefix", ["", "/api"])
async def test_quart_blueprints_are_labelled_and_keep_the_contract(
    prefix: str, logs: LogCapture
) -> None:
    """Blueprint routes are labelled with their prefix; Quart's HTML errors become JSON, also under a root path."""
    import httpx

    app = buttress.wrap(quart_blueprint_app(), configure_logging=False, rate_limit="")
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 1), root_path=prefix)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        ok = await client.get(f"{prefix}/shop/orders/5")
        missing = await client.get(f"{prefix}/shop/orders/0")
        failed = await client.get(f"{prefix}/shop/orders/5/invoice")
        stats = await client.get(f"{prefix}/admin/stats")
    assert ok.json() == {"order": 5} and stats.json() == {"orders": 3}
    assert (missing.status_code, missing.json()) == (404, {"detail": "Not Found"})
    assert (failed.status_code, failed.json()) == (500, {"detail": "Internal server error"})
    assert [line["route"] for line in logs.access] == [
        "/shop/orders/{order_id}",
        "/shop/orders/{order_id}",
        "/shop/orders/{order_id}/invoice",
        "/admin/stats",
    ]
