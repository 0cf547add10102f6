"""Fault injection: what the whole stack does when its dependencies or the client fail.

Storage outages (a real redis-server killed and restarted under a real uvicorn), a Sentry
ingest that is unreachable or holds its answer, a bad ``PROMETHEUS_MULTIPROC_DIR``,
``BaseException`` raised through ``wrap()``, exceptions mid-stream, and a ``send`` that
raises because the client went away.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import sentry_sdk
import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route
from uvicorn.protocols.utils import ClientDisconnected

import buttress
from buttress.context import get_request_id
from tests.apps import build
from tests.asgi_driver import http_scope
from tests.conftest import ROOT, LogCapture, client_for, free_port, start_server, stop
from tests.sentry_ingest import _decompress, parse_envelope

UNHANDLED = "unhandled exception"
UNHANDLED_STARTED = "unhandled exception after the response started"


def stack(app: Any, registry: CollectorRegistry, **overrides: Any) -> Any:
    return buttress.wrap(app, configure_logging=False, registry=registry, **overrides)


def in_progress(registry: CollectorRegistry) -> float | None:
    return registry.get_sample_value("http_requests_in_progress", {"method": "GET"})


def counted(registry: CollectorRegistry, route: str, status: int) -> float | None:
    labels = {"method": "GET", "route": route, "status": str(status)}
    return registry.get_sample_value("http_requests_total", labels)


def _receiver() -> Callable[[], Any]:
    """The request body once, then nothing: the client neither sends nor hangs up."""
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    return receive


def _scope(flavour: str) -> dict[str, Any]:
    """A request to ``/x``; Starlette streams differently from ASGI spec 2.4 on."""
    spec = flavour.rpartition("-")[2] if flavour.startswith("starlette-") else "2.3"
    return http_scope("/x", asgi={"version": "3.0", "spec_version": spec})


def _until(check: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
    """Poll ``check`` until it returns something truthy, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _samples(base: str) -> dict[str, list[Any]]:
    text = httpx.get(base + "/metrics", timeout=10).text
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def _sample(base: str, family: str, name: str, **labels: str) -> float:
    return sum(
        s.value
        for s in _samples(base).get(family, [])
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def _json_lines(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


# --- BaseException through the whole stack ------------------------------------------------


class Abort(BaseException):
    """A custom BaseException, as frameworks and task groups define them."""


@pytest.mark.parametrize(
    ("kind", "status"),
    [
        (asyncio.CancelledError, 499),
        (KeyboardInterrupt, 500),
        (SystemExit, 500),
        (GeneratorExit, 500),
        (Abort, 500),
    ],
)
async def test_base_exceptions_propagate_through_the_stack(
    kind: type[BaseException], status: int, logs: LogCapture
) -> None:
    """A BaseException from the app propagates unchanged; books balance, context is reset.

    The error layer converts only ``Exception``: nothing is sent, nothing is logged as an
    unhandled error. The gauge returns to 0, exactly one access line is written and it
    names the same status the metrics count (499 for a cancellation, else the 500 the
    server answers), and no request id or log context outlives the request.
    """
    registry = CollectorRegistry()
    seen: list[str | None] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(get_request_id())
        raise kind()

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    with pytest.raises(kind):
        await stack(app, registry)(_scope("raw"), _receiver(), send)
    assert sent == []
    assert seen[0] is not None
    assert get_request_id() is None
    assert structlog.contextvars.get_contextvars() == {}
    assert in_progress(registry) == 0
    assert counted(registry, "<unmatched>", status) == 1
    assert [line["status"] for line in logs.access] == [status]
    assert logs.events(UNHANDLED) == [] and logs.events(UNHANDLED_STARTED) == []


# --- exceptions during streaming ------------------------------------------------------------


def _streaming_apps() -> dict[str, Any]:
    async def raw(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        raise RuntimeError("mid-stream")

    async def stream(request: Request) -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"part"
            raise RuntimeError("mid-stream")

        return StreamingResponse(chunks(), media_type="text/plain")

    return {"raw": raw, "starlette": Starlette(routes=[Route("/x", stream)])}


@pytest.mark.parametrize("flavour", ["raw", "starlette-2.3", "starlette-2.4"])
async def test_exception_mid_stream_is_reraised_logged_once_counted_as_sent(
    flavour: str, logs: LogCapture
) -> None:
    """Mid-stream: no second start, re-raised to the server, logged once, counted as 200."""
    registry = CollectorRegistry()
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    app = _streaming_apps()[flavour.partition("-")[0]]
    with pytest.raises(RuntimeError, match="mid-stream"):
        await stack(app, registry)(_scope(flavour), _receiver(), send)
    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert [m["status"] for m in starts] == [200]
    assert len(logs.events(UNHANDLED_STARTED)) == 1
    assert logs.events(UNHANDLED) == []
    assert [(a["status"], a["response_bytes"]) for a in logs.access] == [(200, 4)]
    assert in_progress(registry) == 0
    assert counted(registry, "<unmatched>" if flavour == "raw" else "/x", 200) == 1


# --- a send that raises because the client went away --------------------------------------


def _client_gone_app(flavour: str) -> Any:
    async def raw(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def stream(request: Request) -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"part"

        return StreamingResponse(chunks(), media_type="text/plain")

    return raw if flavour == "raw" else Starlette(routes=[Route("/x", stream)])


@pytest.mark.parametrize("error", [OSError, ClientDisconnected])
@pytest.mark.parametrize("fail_on", ["http.response.start", "http.response.body"])
@pytest.mark.parametrize("flavour", ["raw", "starlette-2.3", "starlette-2.4"])
async def test_send_failing_because_the_client_left_is_one_quiet_line(
    flavour: str, fail_on: str, error: type[OSError], logs: LogCapture
) -> None:
    """A server ``send`` raising OSError (client gone) propagates, is not a 500 traceback.

    Whatever the app turns it into (Starlette raises ClientDisconnect), it reaches the
    server; buttress writes no error traceback and reports nothing, logs one warning line,
    one access line (499 when not even the start went out, else the status sent), and
    the gauge returns to 0.
    """
    registry = CollectorRegistry()

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == fail_on:
            raise error("client went away")

    with pytest.raises(Exception):  # the app decides the type (Starlette: ClientDisconnect)
        await stack(_client_gone_app(flavour), registry)(_scope(flavour), _receiver(), send)
    status = 499 if fail_on == "http.response.start" else 200
    assert logs.events(UNHANDLED) == [] and logs.events(UNHANDLED_STARTED) == []
    errors = [line for line in logs.lines if line.get("level") in ("error", "critical")]
    assert errors == []
    assert len(logs.events("client disconnected while the response was sent")) == 1
    assert [line["status"] for line in logs.access] == [status]
    assert in_progress(registry) == 0
    route = "<unmatched>" if flavour == "raw" else "/x"
    assert counted(registry, route, status) == 1


# --- Sentry unreachable or slow -----------------------------------------------------------


class HoldingIngest:
    """A Sentry ingest that receives an envelope, then holds its answer until released."""

    def __init__(self) -> None:
        self.received = threading.Event()
        self.release = threading.Event()
        self.answered = 0
        self.items: list[tuple[dict[str, Any], Any]] = []
        self._cond = threading.Condition()
        ingest = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = _decompress(body, self.headers.get("Content-Encoding") or "")
                with ingest._cond:
                    ingest.items.extend(parse_envelope(body))
                    ingest._cond.notify_all()
                ingest.received.set()
                ingest.release.wait(30)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")
                with ingest._cond:
                    ingest.answered += 1

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.dsn = f"http://public@127.0.0.1:{self.server.server_address[1]}/1"

    def events(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        with self._cond:
            assert self._cond.wait_for(
                lambda: len([p for h, p in self.items if h.get("type") == "event"]) >= count,
                timeout,
            ), f"expected {count} events"
            return [p for h, p in self.items if h.get("type") == "event"]


@pytest.fixture
def holding_ingest() -> Iterator[HoldingIngest]:
    ingest = HoldingIngest()
    thread = threading.Thread(target=ingest.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield ingest
    finally:
        ingest.release.set()
        sentry_sdk.get_client().close(timeout=5)
        sentry_sdk.get_global_scope().set_client(None)
        ingest.server.shutdown()
        ingest.server.server_close()
        thread.join(timeout=5)


async def test_slow_sentry_ingest_never_delays_a_response(
    holding_ingest: HoldingIngest, logs: LogCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Responses go out while the ingest still holds the envelope; the events arrive later.

    Proved by order, not time: the first 500 is answered before the ingest answered
    anything; a second 500 is answered while the ingest is known to be holding the first
    envelope. Released, both events arrive tagged with their request ids.
    """
    monkeypatch.setenv("SENTRY_DSN", holding_ingest.dsn)
    app = buttress.wrap(build("starlette"), configure_logging=False, metrics=False)
    async with client_for(app) as client:
        first = await client.get("/boom")
        assert holding_ingest.answered == 0
        assert (first.status_code, first.json()) == (500, {"detail": "Internal server error"})
        assert await asyncio.to_thread(holding_ingest.received.wait, 10)
        second = await client.get("/boom")
        assert (second.status_code, second.json()) == (500, {"detail": "Internal server error"})
        assert holding_ingest.answered == 0
    holding_ingest.release.set()
    events = holding_ingest.events(2)
    assert sorted(e["tags"]["request_id"] for e in events) == sorted(
        [first.headers["x-request-id"], second.headers["x-request-id"]]
    )


async def test_unreachable_sentry_changes_nothing_for_the_client(
    logs: LogCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A DSN pointing at a closed port: the normal 500 contract, nothing raises."""
    monkeypatch.setenv("SENTRY_DSN", f"http://public@127.0.0.1:{free_port()}/1")
    try:
        app = buttress.wrap(build("starlette"), configure_logging=False, metrics=False)
        async with client_for(app) as client:
            for _ in range(3):
                resp = await client.get("/boom")
                assert (resp.status_code, resp.json()) == (500, {"detail": "Internal server error"})
            assert (await client.get("/ok")).status_code == 200
        sentry_sdk.flush(timeout=5)
        assert len(logs.events(UNHANDLED)) == 3
    finally:
        sentry_sdk.get_client().close(timeout=2)
        sentry_sdk.get_global_scope().set_client(None)


# --- PROMETHEUS_MULTIPROC_DIR -------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["a file", "under a file", "missing"])
def test_run_refuses_an_unusable_multiproc_dir(shape: str, tmp_path: Path) -> None:
    """``buttress run --workers 2`` exits 2 at start-up naming the variable and its value."""
    file = tmp_path / "not-a-dir"
    file.write_text("x")
    value = {
        "a file": file,
        "under a file": file / "metrics",
        "missing": tmp_path / "nope" / "metrics",
    }[shape]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PROMETHEUS_MULTIPROC_DIR": str(value)}
    args = ["run", "tests.served:app", "--workers", "2", "--port", str(free_port())]
    result = subprocess.run(
        [sys.executable, "-m", "buttress.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert f"PROMETHEUS_MULTIPROC_DIR={str(value)!r}" in result.stderr
    assert "not a writable directory" in result.stderr
    assert "Traceback" not in result.stderr


# --- real server: Redis outage, streaming abort ---------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("fail_open", [True, False])
def test_redis_killed_and_restarted_under_a_real_server(fail_open: bool, redis_server: Any) -> None:
    """Redis down: requests pass (fail-open) or get 503 (fail-closed); back up: limits again.

    Routes without a limit never touch the storage and keep answering 200; the outage is
    counted in ``ratelimit_storage_errors_total`` on ``/metrics``.
    """
    env = {
        "BUTTRESS_RATE_LIMIT_STORAGE": redis_server.url,
        "BUTTRESS_RATE_LIMITS": json.dumps({"/limited": "3/minute"}),
        "BUTTRESS_RATE_LIMIT_FAIL_OPEN": "true" if fail_open else "false",
    }
    proc, port = start_server(
        ["-m", "uvicorn", "tests.faults_served:app", "--port", "{port}", "--no-access-log"],
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=10) as client:

            def status(path: str = "/limited") -> int:
                return client.get(path).status_code

            assert [status() for _ in range(4)] == [200, 200, 200, 429]
            redis_server.stop()
            down = [client.get("/limited") for _ in range(5)]
            if fail_open:
                assert [r.status_code for r in down] == [200] * 5
            else:
                assert [r.status_code for r in down] == [503] * 5
                assert down[0].json() == {"detail": "Rate limiter unavailable"}
            assert status("/ok") == 200
            errors = _sample(base, "ratelimit_storage_errors", "ratelimit_storage_errors_total")
            assert errors >= 5
            redis_server.start()  # same port, empty data
            # The client reconnects by itself: the first decision that reaches Redis again
            # passes; then the limit applies from the fresh count.
            _until(lambda: status() == 200 and redis_has_keys(redis_server), "Redis to be used")
            after = [status() for _ in range(4)]
            assert 429 in after and after.index(429) <= 2, after
            assert 503 not in after
    finally:
        output = stop(proc)
    lines = _json_lines(output)
    assert len([e for e in lines if e.get("event") == "rate_limit_storage_unavailable"]) >= 1


def redis_has_keys(server: Any) -> bool:
    import redis

    client = redis.Redis.from_url(server.url)
    try:
        return bool(client.dbsize())
    finally:
        client.close()


@pytest.mark.slow
def test_exception_mid_stream_aborts_the_connection_under_uvicorn() -> None:
    """A stream that raises under uvicorn: the client sees an incomplete body, not a hang.

    The request is counted as the 200 that was sent, the gauge returns to 0, and the
    traceback is logged once (by buttress; uvicorn's duplicate is dropped).
    """
    proc, port = start_server(
        ["-m", "uvicorn", "tests.faults_served:app", "--port", "{port}", "--no-access-log"]
    )
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=10) as client:
            received: list[bytes] = []

            def read_stream() -> None:
                with client.stream("GET", "/stream-boom") as response:
                    assert response.status_code == 200
                    received.extend(response.iter_bytes())

            with pytest.raises(httpx.RemoteProtocolError):
                read_stream()
            assert b"".join(received) == b"first\n"
            assert client.get("/ok").status_code == 200
        _until(
            lambda: (
                _sample(
                    base,
                    "http_requests",
                    "http_requests_total",
                    route="/stream-boom",
                    status="200",
                )
                == 1
            ),
            "the aborted stream to be counted",
        )
        samples = _samples(base)
        assert sum(s.value for s in samples["http_requests_in_progress"]) == 0
    finally:
        output = stop(proc)
    lines = _json_lines(output)
    tracebacks = [line for line in lines if "mid-stream boom" in json.dumps(line)]
    assert [line["event"] for line in tracebacks] == [UNHANDLED_STARTED], tracebacks
    access = [line for line in lines if line.get("logger") == "buttress.access"]
    assert [(a["path"], a["status"]) for a in access if a["path"] == "/stream-boom"] == [
        ("/stream-boom", 200)
    ]
