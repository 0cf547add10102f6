"""Request ids: a pluggable generator and validator, the id in the app's headers, and outgoing propagation."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

import buttress
from buttress.propagation import httpx_event_hooks, outgoing_headers, propagate_requests
from tests.apps import build
from tests.conftest import LogCapture, client_for, start_server, stop

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def test_custom_generator_and_validator(logs: LogCapture) -> None:
    """id_generator makes new ids; id_validator refuses an incoming one, which is replaced with a warning."""
    counter = iter(range(100))

    def ulid_like() -> str:
        return f"01HZ{next(counter):022d}"

    app = buttress.RequestContextMiddleware(
        build("starlette"),
        id_generator=ulid_like,
        id_validator=lambda value: value.startswith("01"),
    )
    async with client_for(app) as client:
        fresh = await client.get("/ok")
        kept = await client.get("/ok", headers={"X-Request-ID": "01ABC"})
        replaced = await client.get("/ok", headers={"X-Request-ID": "not-ours"})
    assert fresh.headers["x-request-id"] == "01HZ" + "0" * 22
    assert kept.headers["x-request-id"] == "01ABC"
    assert replaced.headers["x-request-id"].startswith("01HZ")
    warnings = logs.events("invalid request id replaced")
    assert len(warnings) == 1 and warnings[0]["received"] == "not-ours"


async def test_a_flood_of_bad_ids_is_one_warning(logs: LogCapture) -> None:
    """Malformed incoming ids are replaced silently after the first warning of an interval."""
    app = buttress.RequestContextMiddleware(build("raw"))
    async with client_for(app) as client:
        for i in range(50):
            await client.get("/ok", headers={"X-Request-ID": f"bad id {i}"})
    assert len(logs.events("invalid request id replaced")) == 1


async def test_generated_id_is_in_the_request_headers_when_asked(framework: str) -> None:
    """BUTTRESS_REQUEST_ID_IN_REQUEST=true lets the app read request.headers['x-request-id']."""
    seen: list[str | None] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(dict(scope["headers"]).get(b"x-request-id", b"").decode() or None)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    on = buttress.wrap(app, configure_logging=False, request_id_in_request=True)
    off = buttress.wrap(app, configure_logging=False)
    async with client_for(on) as client:
        answered = await client.get("/x")
    async with client_for(off) as client:
        await client.get("/x")
    assert seen[0] == answered.headers["x-request-id"]
    assert seen[1] is None


async def test_outgoing_httpx_calls_carry_the_id_and_the_trace() -> None:
    """Inside a request, an httpx client with buttress' hooks sends X-Request-ID and a child traceparent."""
    received: list[httpx.Request] = []

    def downstream(request: httpx.Request) -> httpx.Response:
        received.append(request)
        return httpx.Response(200)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        transport = httpx.MockTransport(downstream)  # the next service, in process
        async with httpx.AsyncClient(
            transport=transport, event_hooks=httpx_event_hooks(async_client=True)
        ) as client:
            await client.get("http://next.internal/a")
            await client.get("http://next.internal/b", headers={"X-Request-ID": "mine"})
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    wrapped = buttress.wrap(app, configure_logging=False)
    async with client_for(wrapped) as client:
        response = await client.get("/", headers={"traceparent": TRACEPARENT})
    first, second = received
    assert first.headers["x-request-id"] == response.headers["x-request-id"]
    version, trace_id, span_id, flags = first.headers["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", "4bf92f3577b34da6a3ce929d0e0e4736", "01")
    assert span_id != "00f067aa0ba902b7" and len(span_id) == 16
    assert second.headers["x-request-id"] == "mine"  # the caller's own header wins


def test_nothing_is_added_outside_a_request() -> None:
    """A background job's calls carry no request id."""
    assert outgoing_headers() == {}


@pytest.mark.slow
def test_requests_session_propagates_the_id_to_a_real_server() -> None:
    """A requests.Session made by propagate_requests sends the id to the next real service."""
    proc, port = start_server(
        ["-m", "uvicorn", "tests.served:app", "--port", "{port}", "--log-level", "warning"],
        {"TEST_FRAMEWORK": "starlette"},
    )
    try:
        sent: list[str] = []

        async def app(scope: Any, receive: Any, send: Any) -> None:
            import requests as req

            session = propagate_requests(req.Session())
            reply = session.get(f"http://127.0.0.1:{port}/ok", timeout=10)
            sent.append(json.dumps(dict(reply.request.headers)))
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        import asyncio

        wrapped = buttress.wrap(app, configure_logging=False)

        async def run() -> httpx.Response:
            async with client_for(wrapped) as client:
                return await client.get("/")

        response = asyncio.run(run())
    finally:
        stop(proc)
    assert json.loads(sent[0])["X-Request-ID"] == response.headers["x-request-id"]


async def test_a_browser_app_can_read_the_id_through_cors() -> None:
    """With CORSMiddleware(expose_headers=["X-Request-ID"]), a cross-origin response exposes the id."""
    from starlette.middleware import Middleware
    from starlette.middleware.cors import CORSMiddleware

    app = build("starlette")
    app.user_middleware.insert(
        0,
        Middleware(
            CORSMiddleware,
            allow_origins=["https://app.example"],
            expose_headers=["X-Request-ID"],
        ),
    )
    wrapped = buttress.wrap(app, configure_logging=False)
    async with client_for(wrapped) as client:
        response = await client.get("/ok", headers={"Origin": "https://app.example"})
        preflight = await client.options(
            "/ok",
            headers={"Origin": "https://app.example", "Access-Control-Request-Method": "GET"},
        )
    assert response.headers["access-control-allow-origin"] == "https://app.example"
    assert response.headers["access-control-expose-headers"] == "X-Request-ID"
    assert response.headers["x-request-id"]
    assert preflight.status_code == 200 and preflight.headers["x-request-id"]
