"""Sentry: the real sentry-sdk reports to a local ingest over HTTP; we read what arrived."""

from __future__ import annotations

from typing import Any

import pytest
import sentry_sdk
from starlette.requests import Request  # FastAPI resolves the handler's annotation by name

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
    # A raw ASGI app has no route templates: the URL is in event["request"], never the name.
    assert event["transaction"] == ("<unmatched>" if framework == "raw" else "/boom")
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


async def test_unmatched_paths_never_name_a_transaction_or_an_event(
    sentry_ingest: SentryIngest, logs: LogCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scanner's random 404s give one bounded transaction name, never the raw URL."""
    monkeypatch.setenv("SENTRY_DSN", sentry_ingest.dsn)
    app = stack(build("starlette"), sentry_traces_sample_rate="1", sentry_status_codes="404")
    async with client_for(app) as client:
        for path in ("/wp-admin/x.php", "/.env", "/a/b/c"):
            assert (await client.get(path)).status_code == 404
    sentry_sdk.flush(timeout=10)
    names = {t["transaction"] for t in sentry_ingest.transactions}
    assert names == {"<unmatched>"}
    assert {e["transaction"] for e in sentry_ingest.events} <= {"<unmatched>"}


# --- what reaches Sentry --------------------------------------------------------------------

SECRETS = {
    "x-api-key": "hdr-APIKEY-1111",
    "x-auth-token": "hdr-AUTHTOKEN-2222",
    "x-tenant": "hdr-TENANTKEY-3333",  # the rate-limit key header, by configuration
}
IPS = {"x-forwarded-for": "198.51.100.23, 10.9.8.7", "x-real-ip": "198.51.100.24"}
QUERY = "api_key=qs-APIKEY-4444&token=qs-TOKEN-5555&password=qs-PASSWORD-6666&q=visible"


def leaky_app(framework: str) -> Any:
    """/leak copies the API key into a local, then raises (Starlette or FastAPI)."""
    if framework == "fastapi":
        from fastapi import FastAPI

        app = FastAPI()

        @app.get("/leak")
        async def leak(request: Request) -> None:
            key = request.headers["x-api-key"]  # an alias sentry's name list cannot see
            raise RuntimeError(f"upstream refused a key of {len(key)} chars")

        return app
    from starlette.applications import Starlette
    from starlette.routing import Route

    async def leak(request: Request) -> None:
        key = request.headers["x-api-key"]
        raise RuntimeError(f"upstream refused a key of {len(key)} chars")

    return Starlette(routes=[Route("/leak", leak)])


@pytest.mark.parametrize("framework", ["starlette", "fastapi"])
async def test_credentials_and_ips_never_reach_sentry(
    framework: str, sentry_ingest: SentryIngest, logs: LogCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Credential headers, credential query parameters, the rate-limit key and IPs are masked."""
    monkeypatch.setenv("SENTRY_DSN", sentry_ingest.dsn)
    app = stack(leaky_app(framework), rate_limit_key="header:X-Tenant")
    async with client_for(app) as client:
        resp = await client.get(f"/leak?{QUERY}", headers={**SECRETS, **IPS})
    assert resp.status_code == 500
    events = flushed(sentry_ingest)
    assert len(events) == 1
    request = events[0]["request"]
    for name in (*SECRETS, *IPS):
        assert request["headers"][name] == "[Filtered]"
    assert request["headers"]["user-agent"].startswith("python-httpx")
    assert request["query_string"].endswith("q=visible")
    assert "api_key=[Filtered]" in request["query_string"]
    assert "env" not in request  # no client IP while send_default_pii is off
    text = sentry_ingest.raw_text
    for value in [*SECRETS.values(), "qs-APIKEY-4444", "qs-TOKEN-5555", "qs-PASSWORD-6666"]:
        assert value not in text  # not in headers, query, frame locals (scope, key), anywhere
    for ip in ("198.51.100.23", "198.51.100.24", "203.0.113.7"):
        assert ip not in text


async def test_ips_sent_when_the_app_allows_pii(
    sentry_ingest: SentryIngest, logs: LogCapture
) -> None:
    """With send_default_pii on, IP headers and the client IP reach Sentry; credentials never."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # deprecated in sentry-sdk 2.75
        sentry_sdk.init(dsn=sentry_ingest.dsn, send_default_pii=True, default_integrations=False)
    app = stack(leaky_app("starlette"))
    async with client_for(app) as client:
        await client.get(f"/leak?{QUERY}", headers={**SECRETS, **IPS})
    events = flushed(sentry_ingest)
    assert len(events) == 1
    request = events[0]["request"]
    assert request["headers"]["x-forwarded-for"] == IPS["x-forwarded-for"]
    assert request["env"] == {"REMOTE_ADDR": "203.0.113.7"}
    assert request["headers"]["x-api-key"] == "[Filtered]"
    assert "hdr-APIKEY-1111" not in sentry_ingest.raw_text
    assert "qs-TOKEN-5555" not in sentry_ingest.raw_text


# --- traces -----------------------------------------------------------------------------------

UPSTREAM_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
UPSTREAM_SPAN = "00f067aa0ba902b7"


@pytest.mark.parametrize(
    "headers",
    [
        {"traceparent": f"00-{UPSTREAM_TRACE}-{UPSTREAM_SPAN}-01"},
        {"sentry-trace": f"{UPSTREAM_TRACE}-{UPSTREAM_SPAN}-1"},
    ],
    ids=["traceparent", "sentry-trace"],
)
async def test_error_links_to_the_upstream_trace_with_tracing_off(
    headers: dict[str, str],
    sentry_ingest: SentryIngest,
    logs: LogCapture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With tracing off, an error event carries the trace id and span of the caller."""
    monkeypatch.setenv("SENTRY_DSN", sentry_ingest.dsn)
    async with client_for(stack(build("starlette"))) as client:
        await client.get("/boom", headers=headers)
        await client.get("/boom")  # a later request without a trace is not stamped
    events = flushed(sentry_ingest)
    assert len(events) == 2
    trace = events[0]["contexts"]["trace"]
    assert (trace["trace_id"], trace["parent_span_id"]) == (UPSTREAM_TRACE, UPSTREAM_SPAN)
    assert events[1]["contexts"]["trace"]["trace_id"] != UPSTREAM_TRACE


async def test_transaction_continues_a_w3c_trace(
    sentry_ingest: SentryIngest, logs: LogCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With tracing on, a request carrying only traceparent continues the caller's trace."""
    monkeypatch.setenv("SENTRY_DSN", sentry_ingest.dsn)
    app = stack(build("starlette"), sentry_traces_sample_rate="1")
    headers = {"traceparent": f"00-{UPSTREAM_TRACE}-{UPSTREAM_SPAN}-01"}
    async with client_for(app) as client:
        await client.get("/items/1", headers=headers)
    sentry_sdk.flush(timeout=10)
    [transaction] = sentry_ingest.transactions
    assert transaction["contexts"]["trace"]["trace_id"] == UPSTREAM_TRACE
    assert transaction["transaction"] == "/items/{item_id}"


@pytest.mark.parametrize("framework", ["starlette", "fastapi", "django", "quart", "litestar"])
async def test_one_transaction_when_the_app_inits_sentry_itself(
    framework: str, sentry_ingest: SentryIngest, logs: LogCapture
) -> None:
    """An app calling sentry_sdk.init with tracing and default integrations: one transaction."""
    sentry_sdk.init(dsn=sentry_ingest.dsn, traces_sample_rate=1.0)
    async with client_for(stack(build(framework))) as client:
        ok = await client.get("/items/7")
        boom = await client.get("/boom")
    assert (ok.status_code, boom.status_code) == (200, 500)
    sentry_sdk.flush(timeout=10)
    assert len(sentry_ingest.transactions) == 2  # one per request
    assert len(sentry_ingest.events) == 1
    assert sentry_ingest.events[0]["tags"]["request_id"] == boom.headers["x-request-id"]


# --- per-request scopes -----------------------------------------------------------------------


async def test_tags_and_breadcrumbs_stay_with_their_request(
    sentry_ingest: SentryIngest, logs: LogCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two concurrent requests: each error event carries only its own tag and breadcrumb."""
    import asyncio

    monkeypatch.setenv("SENTRY_DSN", sentry_ingest.dsn)
    both_set = asyncio.Event()
    arrived: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        who = scope["path"].strip("/")
        sentry_sdk.set_tag("who", who)
        sentry_sdk.add_breadcrumb(message=f"crumb-{who}")
        arrived.append(who)
        if len(arrived) == 2:
            both_set.set()
        await both_set.wait()  # both requests have set theirs before either raises
        raise RuntimeError(f"failed for {who}")

    async with client_for(stack(app)) as client:
        await asyncio.gather(client.get("/a"), client.get("/b"))
    events = flushed(sentry_ingest)
    assert len(events) == 2
    for event in events:
        who = event["exception"]["values"][-1]["value"].rsplit(" ", 1)[1]
        assert event["tags"]["who"] == who
        crumbs = [c.get("message", "") for c in event["breadcrumbs"]["values"]]
        assert [c for c in crumbs if c.startswith("crumb-")] == [f"crumb-{who}"]


@pytest.mark.parametrize("limit", ["0", "4096"])
async def test_json_request_bodies_reach_sentry_only_when_asked(
    limit: str, sentry_ingest: SentryIngest, logs: LogCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BUTTRESS_SENTRY_REQUEST_BODIES attaches a JSON body (credential keys filtered); off by default."""
    from starlette.applications import Starlette
    from starlette.routing import Route

    async def checkout(request: Request) -> None:
        await request.json()
        raise RuntimeError("payment failed")

    monkeypatch.setenv("SENTRY_DSN", sentry_ingest.dsn)
    app = stack(
        Starlette(routes=[Route("/checkout", checkout, methods=["POST"])]),
        sentry_request_bodies=limit,
    )
    body = {"cart": [1, 2], "card": {"number": "4242", "password": "hunter2-hunter2"}}
    async with client_for(app) as client:
        assert (await client.post("/checkout", json=body)).status_code == 500
    (event,) = flushed(sentry_ingest)
    assert "hunter2-hunter2" not in sentry_ingest.raw_text
    if limit == "0":
        assert "data" not in event["request"]
    else:
        assert event["request"]["data"]["cart"] == [1, 2]
        assert event["request"]["data"]["card"]["password"] == "[Filtered]"
