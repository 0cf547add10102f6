"""Logging: one JSON access line per request, one format for every logger, safe rendering."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from typing import Any

import pytest
import structlog

import buttress
from buttress import RequestContextMiddleware
from tests.asgi_driver import call, http_scope
from tests.conftest import LogCapture, client_for


def _settings(**kw: Any) -> buttress.Settings:
    return buttress.Settings.from_env({}, **kw)


async def _ok(scope: Any, receive: Any, send: Any) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": b"hello"})


async def test_one_access_line_per_request_with_its_fields(
    app: Any, framework: str, logs: LogCapture
) -> None:
    """Each request writes exactly one access event with method, path, route, status and timing."""
    stack = buttress.wrap(app, configure_logging=False)
    async with client_for(stack) as client:
        response = await client.get("/items/42", headers={"User-Agent": "probe/1.0"})
    (line,) = logs.access
    assert line["event"] == "request"
    assert line["method"] == "GET"
    assert line["path"] == "/items/42"
    # a raw ASGI app exposes no template
    assert line["route"] == (None if framework == "raw" else "/items/{item_id}")
    assert line["status"] == 200
    assert line["level"] == "info"
    assert line["client_ip"] == "203.0.113.7"
    assert line["user_agent"] == "probe/1.0"
    assert line["request_id"] == response.headers["x-request-id"]
    assert line["response_bytes"] == len(response.content)
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
    assert line["timestamp"].endswith("Z")


@pytest.mark.parametrize(
    ("status", "level"),
    [(200, "info"), (302, "info"), (404, "warning"), (429, "warning"), (503, "error")],
)
async def test_access_level_follows_status(status: int, level: str, logs: LogCapture) -> None:
    """Below 400 is info, 4xx is a warning, 5xx an error."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    await call(RequestContextMiddleware(app), http_scope())
    assert [(line["status"], line["level"]) for line in logs.access] == [(status, level)]


async def test_excluded_paths_are_not_access_logged(logs: LogCapture) -> None:
    """The metrics path (by default) and configured paths write no access line."""
    stack = RequestContextMiddleware(
        _ok, access_log_exclude="/healthz,/metrics"
    )
    for path in ("/healthz", "/metrics", "/ok"):
        await call(stack, http_scope(path=path))
    assert [line["path"] for line in logs.access] == ["/ok"]


async def test_access_log_can_be_turned_off(logs: LogCapture) -> None:
    """BUTTRESS_ACCESS_LOG=false writes no access lines but keeps the request id."""
    stack = RequestContextMiddleware(_ok, access_log=False)
    messages = await call(stack, http_scope())
    assert logs.access == []
    assert dict(messages[0]["headers"])[b"x-request-id"]


async def test_hostile_path_stays_on_one_json_line(logs: LogCapture) -> None:
    """Newlines and control characters in the path are escaped, never splitting a line."""
    path = '/a\nb\r\x00\x1b[31m"}{"level":"critical'
    await call(RequestContextMiddleware(_ok), http_scope(path=path))
    raw = logs.text.splitlines()
    assert len(raw) == 1
    assert json.loads(raw[0])["path"] == path


async def test_lone_surrogates_do_not_lose_the_line(logs: LogCapture) -> None:
    """A path a server decoded with surrogate escapes still produces a parseable line."""
    path = "/caf\udce9"
    await call(RequestContextMiddleware(_ok), http_scope(path=path))
    (line,) = logs.access
    assert line["status"] == 200 and line["path"].startswith("/caf")


async def test_http10_without_host_or_client(logs: LogCapture) -> None:
    """An HTTP/1.0 request with no Host header and no peer address is served and logged."""
    scope = http_scope(headers=[], http_version="1.0")
    del scope["client"]
    messages = await call(RequestContextMiddleware(_ok), scope)
    assert messages[0]["status"] == 200
    (line,) = logs.access
    assert line["client_ip"] is None and line["user_agent"] is None


async def test_disconnected_client_is_logged_once(logs: LogCapture) -> None:
    """A request cancelled because the client left is logged once, as 499."""
    started = asyncio.Event()

    async def hang(scope: Any, receive: Any, send: Any) -> None:
        started.set()
        await asyncio.sleep(3600)

    task = asyncio.ensure_future(
        call(RequestContextMiddleware(hang), http_scope())
    )
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [line["status"] for line in logs.access] == [499]


async def test_stdlib_logging_uses_the_same_json_format(logs: LogCapture) -> None:
    """Standard-library loggers (uvicorn, the app's) write the same JSON, with request context."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        logging.getLogger("myapp.db").warning("slow query %s", "users", extra={"ms": 812})
        await _ok(scope, receive, send)

    await call(
        RequestContextMiddleware(app),
        http_scope(headers=[(b"x-request-id", b"std-1")]),
    )
    (line,) = [line for line in logs.lines if line.get("logger") == "myapp.db"]
    assert line["event"] == "slow query users"
    assert line["level"] == "warning"
    assert line["ms"] == 812
    assert line["request_id"] == "std-1"
    assert "message" not in line


def test_configure_logging_twice_adds_no_second_handler() -> None:
    """Calling configure_logging again replaces its handler instead of doubling lines."""
    stream = io.StringIO()
    try:
        buttress.configure_logging(stream=stream)
        buttress.configure_logging(stream=stream)
        ours = [h for h in logging.getLogger().handlers if getattr(h, "_buttress_handler", False)]
        assert len(ours) == 1
        logging.getLogger("x").warning("once")
        assert stream.getvalue().count("once") == 1
    finally:
        for h in list(logging.getLogger().handlers):
            if getattr(h, "_buttress_handler", False):
                logging.getLogger().removeHandler(h)


def test_level_filters_structlog_and_stdlib(logs: LogCapture) -> None:
    """BUTTRESS_LOG_LEVEL applies to structlog and the standard library alike."""
    buttress.configure_logging(level="WARNING", stream=logs.stream)
    structlog.get_logger("a").info("hidden")
    logging.getLogger("b").info("hidden too")
    structlog.get_logger("a").warning("shown")
    assert [line["event"] for line in logs.lines] == ["shown"]


def test_exceptions_are_structured_without_locals(logs: LogCapture) -> None:
    """In JSON, an exception is structured data, and local variables never appear."""
    from tests.apps import SECRET, _boom

    try:
        _boom()
    except RuntimeError:
        structlog.get_logger("app").exception("failed")
    (line,) = logs.events("failed")
    trace = line["exception"]
    assert isinstance(trace, list) and trace[0]["exc_type"] == "RuntimeError"
    assert trace[0]["frames"]
    assert SECRET not in logs.text


def test_console_format_is_readable_and_one_line_per_event() -> None:
    """The console renderer writes a coloured line per event, control characters escaped."""
    stream = io.StringIO()
    try:
        buttress.configure_logging(log_format="console", show_locals=True, stream=stream)
        structlog.get_logger("app").info("hello", path="/a\nb")
        text = stream.getvalue()
        assert "hello" in text and "\x1b[" in text
        assert text.count("\n") == 1 and "\\x0a" in text
    finally:
        for h in list(logging.getLogger().handlers):
            if getattr(h, "_buttress_handler", False):
                logging.getLogger().removeHandler(h)


def test_uvicorn_loggers_go_through_buttress() -> None:
    """uvicorn's error logger propagates to our handler and its access log is silenced."""
    stream = io.StringIO()
    try:
        buttress.configure_logging(stream=stream)
        logging.getLogger("uvicorn.error").info(
            "Started server process", extra={"color_message": "Started \x1b[36mserver\x1b[0m"}
        )
        logging.getLogger("uvicorn.access").info("GET / 200")
        lines = [json.loads(x) for x in stream.getvalue().splitlines()]
        assert [x["event"] for x in lines] == ["Started server process"]
        assert lines[0]["logger"] == "uvicorn.error"
        assert "color_message" not in lines[0]
    finally:
        for h in list(logging.getLogger().handlers):
            if getattr(h, "_buttress_handler", False):
                logging.getLogger().removeHandler(h)


async def test_direct_access_line_matches_the_structlog_chain(logs: LogCapture) -> None:
    """The fast access-log path writes the same keys, in the same order, as the processor chain."""
    from buttress.logs import AccessLogger

    fast = AccessLogger()
    assert fast._direct is not None
    slow = AccessLogger()
    slow._direct = None
    structlog.contextvars.bind_contextvars(request_id="r-1", user="u-9")
    from buttress._request import RequestRecord

    for logger in (fast, slow):
        record = RequestRecord("r-1", "1.2.3.4", "")
        record.status = 404
        record.sent = 9
        logger.log(http_scope(headers=[(b"user-agent", b"ua")]), record, None)
    first, second = logs.lines
    assert list(first) == list(second)
    for key in first:
        if key not in ("timestamp", "duration_ms"):
            assert first[key] == second[key], key
    assert first["timestamp"][:19] == second["timestamp"][:19]
    assert len(first["timestamp"]) == len(second["timestamp"])


async def test_access_lines_respect_the_log_level(logs: LogCapture) -> None:
    """With BUTTRESS_LOG_LEVEL=WARNING, successful requests write no access line, 4xx still do."""
    buttress.configure_logging(level="WARNING", stream=logs.stream)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        status = 404 if scope["path"] == "/missing" else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    stack = RequestContextMiddleware(app)
    await call(stack, http_scope(path="/ok"))
    await call(stack, http_scope(path="/missing"))
    assert [line["path"] for line in logs.access] == ["/missing"]


async def test_access_log_and_metrics_agree_on_grouped_routes_and_abandoned_requests(
    logs: LogCapture,
) -> None:
    """Path groups name the route in the access log too, and an abandoned request is 499 in both."""
    from prometheus_client import CollectorRegistry

    async def raw(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"].startswith("/gone"):
            await receive()
            await receive()  # the client went away; nothing is answered
            return
        await _ok(scope, receive, send)

    async def disconnecting_receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    registry = CollectorRegistry()
    stack = buttress.wrap(
        raw,
        configure_logging=False,
        registry=registry,
        metrics_path_groups='{"^/users/[0-9]+$": "/users/{id}"}',
    )
    await call(stack, http_scope(path="/users/42"))
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    await stack(http_scope(path="/gone"), disconnecting_receive, send)
    assert [(a["route"], a["status"]) for a in logs.access] == [("/users/{id}", 200), (None, 499)]
    assert (
        registry.get_sample_value(
            "http_requests_total", {"method": "GET", "route": "/users/{id}", "status": "200"}
        )
        == 1.0
    )
    assert (
        registry.get_sample_value(
            "http_requests_total", {"method": "GET", "route": "<unmatched>", "status": "499"}
        )
        == 1.0
    )
