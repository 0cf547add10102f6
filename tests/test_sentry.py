"""Sentry: the real sentry-sdk reports to a local ingest over HTTP; we read what arrived."""

from __future__ import annotations

from typing import Any

import pytest
import sentry_sdk

import buttress
from tests.apps import SECRET, UserAlreadyExists, build
from tests.conftest import LogCapture, client_for
from tests.sentry_ingest import SentryIngest


def stack(app: Any, **overrides: Any) -> Any:
    return buttress.wrap(
        app,
        configure_logging=False,
        metrics=False,
        exception_map={UserAlreadyExists: 409},
        **overrides,
    )


def flushed(ingest: SentryIngest) -> list[dict[str, Any]]:
    """The error events received once the SDK has sent everything it queued."""
    sentry_sdk.flush(timeout=10)
    return ingest.events


def test_no_dsn_does_nothing() -> None:
    """Without SENTRY_DSN, init_sentry starts nothing and says so."""
    assert buttress.init_sentry() is False
    assert not sentry_sdk.get_client().is_active()


async def test_unhandled_error_reported_once_with_request_id(
    framework: str, sentry_ingest: SentryIngest, logs: LogCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unhandled exception in every framework arrives once, tagged with status and request id."""
    monkeypatch.setenv("SENTRY_DSN", sentry_ingest.dsn)
    app = stack(build(framework))
    async with client_for(app) as client:
        resp = await client.get("/boom")
    assert resp.status_code == 500
    events = flushed(sentry_ingest)
    assert len(events) == 1
    event = events[0]
    assert event["tags"]["request_id"] == resp.headers["x-request-id"]
    assert event["tags"]["http_status"] == 500
    assert event["exception"]["values"][-1]["type"] == "RuntimeError"
    assert event["transaction"] == "/boom"
    assert SECRET not in sentry_ingest.raw_text  # the handler's local "password" is scrubbed


async def test_http_exception_reported_only_when_configured(
    sentry_ingest: SentryIngest, logs: LogCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 409 HTTPException is reported only when 409 is in BUTTRESS_SENTRY_STATUS_CODES."""
    monkeypatch.setenv("SENTRY_DSN", sentry_ingest.dsn)
    async with client_for(stack(build("raw"))) as client:
        await client.get("/conflict")
        await client.get("/boom")  # a barrier: it arrives, the 409 never does
    events = flushed(sentry_ingest)
    assert [e["tags"]["http_status"] for e in events] == [500]

    sentry_ingest.clear()
    app = stack(build("raw"), sentry_status_codes="409,500-599")
    async with client_for(app) as client:
        resp = await client.get("/conflict")
    events = flushed(sentry_ingest)
    assert len(events) == 1
    assert events[0]["tags"]["http_status"] == 409
    assert events[0]["tags"]["request_id"] == resp.headers["x-request-id"]
    assert events[0]["extra"]["http_exception_detail"] == "User already exists"
    assert events[0]["extra"]["status_code"] == 409


async def test_mapped_exception_carries_detail(
    sentry_ingest: SentryIngest, logs: LogCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mapped domain exception is reported with its mapped status and the client's detail."""
    monkeypatch.setenv("SENTRY_DSN", sentry_ingest.dsn)
    app = stack(build("starlette"), sentry_status_codes="409")
    async with client_for(app) as client:
        resp = await client.get("/domain")
    assert resp.status_code == 409
    events = flushed(sentry_ingest)
    assert len(events) == 1
    assert events[0]["extra"]["http_exception_detail"] == "Conflict"
    assert events[0]["tags"]["http_status"] == 409
    # The exception itself (type and message) is in the event for the developer.
    assert events[0]["exception"]["values"][-1]["value"] == "User 7 already exists"


async def test_authorization_and_cookie_never_leave(
    sentry_ingest: SentryIngest, logs: LogCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Authorization and Cookie values are absent from everything sent over the wire."""
    monkeypatch.setenv("SENTRY_DSN", sentry_ingest.dsn)
    headers = {
        "Authorization": "Bearer tok-AAAA-1111",
        "Cookie": "session=cookie-BBBB-2222; theme=dark",
    }
    async with client_for(stack(build("starlette"))) as client:
        await client.get("/boom", headers=headers)
    events = flushed(sentry_ingest)
    assert len(events) == 1
    assert events[0]["request"]["headers"]["authorization"] == "[Filtered]"
    text = sentry_ingest.raw_text
    assert "tok-AAAA-1111" not in text
    assert "cookie-BBBB-2222" not in text


async def test_user_before_send_runs_after_ours(
    sentry_ingest: SentryIngest, logs: LogCapture
) -> None:
    """A user's before_send sees our tags and can still change the event."""
    seen: list[dict[str, Any]] = []

    def mine(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any]:
        seen.append(dict(event["tags"]))
        event["tags"]["mine"] = "yes"
        return event

    assert buttress.init_sentry(dsn=sentry_ingest.dsn, before_send=mine)
    async with client_for(stack(build("fastapi"))) as client:
        await client.get("/boom")
    events = flushed(sentry_ingest)
    assert len(events) == 1
    assert "request_id" in seen[0]
    assert events[0]["tags"]["mine"] == "yes"


async def test_events_from_anywhere_tagged_with_request_id(
    sentry_ingest: SentryIngest, logs: LogCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message the app captures itself during a request carries the request id."""
    monkeypatch.setenv("SENTRY_DSN", sentry_ingest.dsn)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        sentry_sdk.capture_message("hello from the app")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async with client_for(stack(app)) as client:
        resp = await client.get("/")
    events = flushed(sentry_ingest)
    assert len(events) == 1
    assert events[0]["tags"]["request_id"] == resp.headers["x-request-id"]


@pytest.mark.parametrize("framework", ["starlette", "fastapi"])
async def test_once_with_sentry_framework_integrations(
    framework: str, sentry_ingest: SentryIngest, logs: LogCapture
) -> None:
    """With sentry's own Starlette/FastAPI integrations on, each error still arrives once."""
    from sentry_sdk.integrations.fastapi import FastApiIntegration
    from sentry_sdk.integrations.starlette import StarletteIntegration

    sentry_sdk.init(
        dsn=sentry_ingest.dsn,
        integrations=[StarletteIntegration(), FastApiIntegration()],
    )
    app = stack(build(framework), sentry_status_codes="409,500-599")
    async with client_for(app) as client:
        boom = await client.get("/boom")
        domain = await client.get("/domain")
        conflict = await client.get("/conflict")
    assert (boom.status_code, domain.status_code, conflict.status_code) == (500, 409, 409)
    events = flushed(sentry_ingest)
    statuses = sorted(e["tags"].get("http_status") for e in events)
    assert statuses == [409, 409, 500]
    ids = {e["tags"]["request_id"] for e in events}
    assert ids == {r.headers["x-request-id"] for r in (boom, domain, conflict)}


async def test_transaction_named_by_route_template(
    sentry_ingest: SentryIngest, logs: LogCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With tracing on, the transaction is named by the route template."""
    monkeypatch.setenv("SENTRY_DSN", sentry_ingest.dsn)
    app = stack(build("starlette"), sentry_traces_sample_rate="1")
    async with client_for(app) as client:
        resp = await client.get("/items/42")
    assert resp.status_code == 200
    sentry_sdk.flush(timeout=10)
    names = [t["transaction"] for t in sentry_ingest.transactions]
    assert names == ["/items/{item_id}"]
    assert sentry_ingest.transactions[0]["transaction_info"]["source"] == "route"
