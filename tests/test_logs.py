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
    assert line["route"] == ("<unmatched>" if framework == "raw" else "/items/{item_id}")
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
    stack = RequestContextMiddleware(_ok, access_log_exclude="/healthz,/metrics")
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

    task = asyncio.ensure_future(call(RequestContextMiddleware(hang), http_scope()))
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


def test_console_format_is_readable_and_one_line_per_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The console renderer writes a coloured line per event, control characters escaped."""
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.delenv("NO_COLOR", raising=False)
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
    assert [(a["route"], a["status"]) for a in logs.access] == [("/users/{id}", 200), ("<unmatched>", 499)]
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


# --- one line per event, whatever the text ---------------------------------------------------

# Valid in JSON, yet each breaks or disguises a line in some viewer: NEL (a C1 control),
# another C1 control (CSI), the line and paragraph separators, a right-to-left override.
_UNSAFE = "a\u0085b\u009bc\u2028d\u2029e\u202ef\u2066g"


def _remove_our_handlers() -> None:
    for h in list(logging.getLogger().handlers):
        if getattr(h, "_buttress_handler", False):
            logging.getLogger().removeHandler(h)


async def test_unsafe_characters_are_escaped_in_json(logs: LogCapture) -> None:
    """Line separators, C1 controls and bidi overrides are escaped in every JSON line."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        structlog.get_logger("app").info("structlog", value=_UNSAFE)
        logging.getLogger("app.std").warning("stdlib %s", _UNSAFE)
        await _ok(scope, receive, send)

    await call(RequestContextMiddleware(app), http_scope(path="/p" + _UNSAFE))
    text = logs.text
    for char in "\u0085\u009b\u2028\u2029\u202e\u2066":
        assert char not in text
    assert "\\u2028" in text and "\\u202e" in text
    raw = text.splitlines()
    assert len(raw) == 3
    structlog_line, stdlib_line, access = (json.loads(x) for x in raw)
    assert structlog_line["value"] == _UNSAFE
    assert stdlib_line["event"] == "stdlib " + _UNSAFE
    assert access["path"] == "/p" + _UNSAFE


def test_unsafe_characters_are_escaped_in_the_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """The console shows line separators, C1 controls and bidi overrides escaped."""
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    stream = io.StringIO()
    try:
        buttress.configure_logging(log_format="console", stream=stream)
        structlog.get_logger("app").info("hello", value=_UNSAFE)
        text = stream.getvalue()
    finally:
        _remove_our_handlers()
    for char in "\u0085\u009b\u2028\u2029\u202e\u2066":
        assert char not in text
    assert "\\x85" in text and "\\u2028" in text and "\\u202e" in text
    assert text.count("\n") == 1


# --- colours ------------------------------------------------------------------------------


def _console_output(stream: Any) -> str:
    buttress.configure_logging(log_format="console", show_locals=False, stream=stream)
    try:
        structlog.get_logger("app").info("hello", key="value")
        try:
            raise ValueError("bad")
        except ValueError:
            structlog.get_logger("app").exception("failed")
    finally:
        _remove_our_handlers()
    stream.flush()
    if isinstance(stream, io.StringIO):
        return stream.getvalue()
    return ""


@pytest.fixture
def terminal() -> Any:
    """A real terminal (a pseudo-terminal) to log to, and a way to read what it got."""
    import os
    import pty

    leader, follower = pty.openpty()
    stream = open(follower, "w", encoding="utf-8", closefd=True)

    def read() -> str:
        stream.flush()
        chunks = []
        os.set_blocking(leader, False)
        while True:
            try:
                chunk = os.read(leader, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks).decode("utf-8", "replace")

    yield stream, read
    stream.close()
    os.close(leader)


def test_console_colours_only_on_a_terminal(terminal: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Console output is coloured on a terminal and plain when piped or written to a file."""
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    plain = _console_output(io.StringIO())
    assert "hello" in plain and "ValueError" in plain
    assert "\x1b[" not in plain
    stream, read = terminal
    _console_output(stream)
    assert "\x1b[" in read()


def test_no_color_and_force_color_are_honoured(
    terminal: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NO_COLOR turns colour off on a terminal (tracebacks too); FORCE_COLOR turns it on anywhere."""
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.setenv("NO_COLOR", "1")
    stream, read = terminal
    _console_output(stream)
    on_terminal = read()
    assert "ValueError" in on_terminal and "\x1b[" not in on_terminal
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert "\x1b[" in _console_output(io.StringIO())


# --- other code's logging ---------------------------------------------------------------


def test_warnings_are_one_json_event(logs: LogCapture) -> None:
    """warnings.warn writes one JSON event (message, category, location), not raw text."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        buttress.configure_logging(stream=logs.stream)  # installs the capture in this block
        warnings.warn("old_api() is going away\nuse new_api()", UserWarning, stacklevel=1)
    (line,) = [line for line in logs.lines if line.get("logger") == "py.warnings"]
    assert line["event"] == "old_api() is going away\nuse new_api()"
    assert line["category"] == "UserWarning"
    assert line["location"].startswith(__file__)
    assert line["level"] == "warning"
    assert len(logs.text.splitlines()) == len(logs.lines)


_GRANIAN_TEXT = (
    "Application callable raised an exception\n"
    "Traceback (most recent call last):\n"
    '  File "/srv/app.py", line 10, in load\n'
    "    raise KeyError(key)\n"
    "KeyError: 'user'\n"
    "\n"
    "The above exception was the direct cause of the following exception:\n"
    "\n"
    "Traceback (most recent call last):\n"
    '  File "/venv/granian/_futures.py", line 15, in future_watcher\n'
    "    await inner(watcher.scope, watcher.proto)\n"
    '  File "/srv/app.py", line 20, in app\n'
    '    raise RuntimeError("no user\\nsecond line") from exc\n'
    "RuntimeError: no user\n"
    "second line"
)


def test_a_traceback_logged_as_text_becomes_a_structured_exception(logs: LogCapture) -> None:
    """granian's traceback (message text, no exc_info) is one JSON line with a parsed exception."""
    logging.getLogger("_granian.utils").error(_GRANIAN_TEXT)
    (line,) = logs.lines
    assert line["event"] == "Application callable raised an exception"
    outer, cause = line["exception"]
    assert outer["exc_type"] == "RuntimeError"
    assert outer["exc_value"] == "no user\nsecond line"
    assert [f["name"] for f in outer["frames"]] == ["future_watcher", "app"]
    assert outer["frames"][1] == {"filename": "/srv/app.py", "lineno": 20, "name": "app"}
    assert cause["exc_type"] == "KeyError" and cause["is_cause"] is True
    assert cause["exc_value"] == "'user'"


def test_server_handlers_are_replaced_even_when_installed_later(logs: LogCapture) -> None:
    """A handler hypercorn installs after the app is imported writes nothing; the line goes once."""
    theirs = io.StringIO()
    hypercorn_error = logging.getLogger("hypercorn.error")
    handler = logging.StreamHandler(theirs)
    handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(message)s"))
    hypercorn_error.handlers = [handler]  # what hypercorn's Logger does, lazily
    hypercorn_error.setLevel(logging.INFO)
    try:
        hypercorn_error.info("Running on http://127.0.0.1:8000")
    finally:
        hypercorn_error.handlers = []
    assert theirs.getvalue() == ""
    (line,) = logs.lines
    assert line["event"] == "Running on http://127.0.0.1:8000"
    assert "asctime" not in line


def test_a_basicconfig_console_handler_on_the_root_is_replaced() -> None:
    """A root handler printing to the console is replaced, with one warning naming it."""
    import sys

    root = logging.getLogger()
    theirs = logging.StreamHandler(sys.stderr)
    root.addHandler(theirs)
    stream = io.StringIO()
    try:
        buttress.configure_logging(stream=stream)
        assert theirs not in root.handlers
        logging.getLogger("app").warning("once")
    finally:
        root.removeHandler(theirs)
        _remove_our_handlers()
    lines = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert [x["event"] for x in lines] == ["replaced_root_handlers", "once"]
    assert lines[0]["handlers"] == ["StreamHandler"]
    assert "BUTTRESS_CONFIGURE_LOGGING=false" in lines[0]["message"]


# --- context ------------------------------------------------------------------------------


async def test_each_request_starts_with_a_clean_log_context(logs: LogCapture) -> None:
    """A key one request binds never appears on the next request's lines, even in one task."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/login":
            structlog.contextvars.bind_contextvars(user="alice")
        structlog.get_logger("app").info("handled")
        await _ok(scope, receive, send)

    structlog.contextvars.bind_contextvars(job="outer")
    async with client_for(RequestContextMiddleware(app)) as client:  # one task for both
        await client.get("/login")
        await client.get("/other")
    first, second = logs.events("handled")
    assert first["user"] == "alice"
    assert "user" not in second
    assert "job" not in first and "job" not in second
    assert [a.get("user") for a in logs.access] == ["alice", None]
    # what was bound around the requests is bound again after them, and nothing else
    assert structlog.contextvars.get_contextvars() == {"job": "outer"}
