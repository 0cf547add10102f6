"""SECURITY.md stays true: every test it cites exists, and the claims without one have one here."""

from __future__ import annotations

import ast
import re
from typing import Any

import pytest
import sentry_sdk

import buttress
from buttress.ratelimit import RateLimitMiddleware
from tests.conftest import ROOT, LogCapture, client_for
from tests.sentry_ingest import SentryIngest

REFERENCE = re.compile(r"(tests/[\w/]+\.py)::(\w+)")


def _defined_tests(path: str) -> set[str]:
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.name.startswith("test_")
    }


def test_security_md_cites_only_tests_that_exist() -> None:
    """Every ``tests/x.py::test_name`` in SECURITY.md names an existing file and test."""
    text = (ROOT / "SECURITY.md").read_text(encoding="utf-8")
    references = REFERENCE.findall(text)
    assert len(references) >= 20, "SECURITY.md should back its claims with tests"
    missing = [
        f"{path}::{name}"
        for path, name in references
        if not (ROOT / path).is_file() or name not in _defined_tests(path)
    ]
    assert missing == []


def _rate_limiter(app: Any) -> RateLimitMiddleware:
    while not isinstance(app, RateLimitMiddleware):
        app = app.app
    return app


async def test_api_keys_are_stored_and_logged_only_as_digests(
    redis_server: Any, logs: LogCapture
) -> None:
    """``header:`` rate-limit keys reach Redis and the rejection log as a digest, never raw."""
    import redis

    api_key = "sk-live-DDDD-4444"
    app = buttress.wrap(
        _ok,
        configure_logging=False,
        rate_limit="1/minute",
        rate_limit_key="header:X-API-Key",
        rate_limit_storage=redis_server.url,
    )
    try:
        async with client_for(app) as client:
            statuses = [
                (await client.get("/x", headers={"X-API-Key": api_key})).status_code
                for _ in range(2)
            ]
    finally:
        await _rate_limiter(app).aclose()
    assert statuses == [200, 429]
    store = redis.Redis.from_url(redis_server.url)
    try:
        keys = [k.decode() for k in store.keys("*")]
    finally:
        store.close()
    assert keys and all(api_key not in k for k in keys)
    assert any("header:" in k for k in keys)
    (rejection,) = logs.events("rate_limit_exceeded")
    assert rejection["key"].startswith("header:") and api_key not in logs.text


async def _ok(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def test_credentials_and_set_cookie_stay_out_of_logs_and_sentry(
    sentry_ingest: SentryIngest, logs: LogCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Authorization, Cookie and Set-Cookie values reach neither the log nor Sentry."""
    monkeypatch.setenv("SENTRY_DSN", sentry_ingest.dsn)
    set_cookie = "sid=setcookie-CCCC-3333; HttpOnly"

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/page":  # an error page that also sets a cookie
            headers = [(b"content-type", b"text/plain"), (b"set-cookie", set_cookie.encode())]
            await send({"type": "http.response.start", "status": 500, "headers": headers})
            await send({"type": "http.response.body", "body": b"broken"})
            return
        sentry_sdk.set_extra("response_headers", {"Set-Cookie": set_cookie})
        raise RuntimeError("crash with a cookie about")

    request_headers = {"Authorization": "Bearer tok-EEEE-5555", "Cookie": "s=cookie-FFFF-6666"}
    async with client_for(buttress.wrap(app, configure_logging=False)) as client:
        crash = await client.get("/crash", headers=request_headers)
        page = await client.get("/page", headers=request_headers)
    assert crash.status_code == page.status_code == 500
    assert page.json() == {"detail": "broken"}
    assert page.headers["set-cookie"] == set_cookie  # the client still gets its cookie
    sentry_sdk.flush(timeout=10)
    assert len(sentry_ingest.events) == 1
    for secret in ("setcookie-CCCC-3333", "tok-EEEE-5555", "cookie-FFFF-6666"):
        assert secret not in sentry_ingest.raw_text
        assert secret not in logs.text


async def test_a_request_id_header_set_by_the_app_is_replaced(logs: LogCapture) -> None:
    """The response carries exactly one request id header: ours, whatever the app set."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"X-Request-ID", b"app-chosen"), (b"x-request-id", b"second")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    async with client_for(buttress.wrap(app, configure_logging=False)) as client:
        response = await client.get("/x", headers={"X-Request-ID": "client-id-1"})
    assert response.headers.get_list("x-request-id") == ["client-id-1"]
    assert logs.access[0]["request_id"] == "client-id-1"
