"""Shared fixtures: the framework matrix, a log capture, clean global state."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog

import buttress
from tests.apps import FRAMEWORKS, build

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _clean_logging_state() -> Iterator[None]:
    """Every test starts with default structlog config and no bound context."""
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


@pytest.fixture(autouse=True)
def _default_retry_policy() -> Iterator[None]:
    """wrap() sets the retry defaults process-wide; every test starts from the documented ones."""
    from buttress.retry import configure_retries

    configure_retries()
    yield
    configure_retries()


@pytest.fixture(autouse=True)
def _no_buttress_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests read settings only from what they pass, never from the developer's shell."""
    for key in list(os.environ):
        if key.startswith("BUTTRESS_") and key != "BUTTRESS_TEST_REDIS_URL":
            monkeypatch.delenv(key)
    monkeypatch.delenv("SENTRY_DSN", raising=False)


@pytest.fixture(params=FRAMEWORKS)
def framework(request: pytest.FixtureRequest) -> str:
    """The name of each framework of the matrix in turn."""
    return str(request.param)


@pytest.fixture
def app(framework: str) -> Any:
    """A fresh app of the framework under test (see tests/apps.py for its routes)."""
    return build(framework)


class LogCapture:
    """The log lines a stack wrote, as parsed JSON objects."""

    def __init__(self) -> None:
        self.stream = io.StringIO()

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    @property
    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text.splitlines() if line.strip()]

    def events(self, event: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("event") == event]

    @property
    def access(self) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("logger") == "buttress.access"]


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    """JSON logging configured to an in-memory stream; ``wrap(..., configure_logging=False)``."""
    import logging

    capture = LogCapture()
    buttress.configure_logging(stream=capture.stream)
    yield capture
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_buttress_handler", False):
            root.removeHandler(handler)


def client_for(asgi_app: Any, **kwargs: Any) -> httpx.AsyncClient:
    """An httpx client that calls ``asgi_app`` in process."""
    transport = httpx.ASGITransport(
        app=asgi_app, client=kwargs.pop("client", ("203.0.113.7", 50000))
    )
    return httpx.AsyncClient(transport=transport, base_url="http://testserver", **kwargs)


@pytest.fixture
def make_client() -> Callable[..., httpx.AsyncClient]:
    return client_for


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[Any], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {_output(proc)!r}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout}s")


def stop(proc: subprocess.Popen[Any]) -> str:
    """Stop a server process and return what it printed."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    out = _output(proc)
    log = getattr(proc, "_buttress_log", None)
    if log is not None:
        log.close()
    return out


def _output(proc: subprocess.Popen[Any]) -> str:
    """What the server wrote so far (to its log file, or its pipe once it has exited)."""
    log = getattr(proc, "_buttress_log", None)
    if log is not None:
        log.flush()
        log.seek(0)
        return str(log.read())
    if proc.stdout is None:
        return ""
    with proc.stdout:
        return str(proc.stdout.read())


def start_server(
    args: list[str],
    env: dict[str, str] | None = None,
    port: int | None = None,
    *,
    cwd: Path = ROOT,
    base_env: Mapping[str, str] | None = None,
) -> tuple[subprocess.Popen[str], int]:
    """Start ``python <args>`` (args include ``{port}``) and wait until it listens.

    ``cwd`` is where it runs, ``base_env`` the environment ``env`` is added to (this
    process's by default).
    """
    port = port or free_port()
    base = os.environ if base_env is None else base_env
    full_env = {**base, "PYTHONPATH": str(ROOT), **(env or {})}
    # A file, not a pipe: a server that logs more than a pipe holds would block on write.
    log = tempfile.TemporaryFile("w+", encoding="utf-8")
    proc = subprocess.Popen(
        [sys.executable, *[a.format(port=port) for a in args]],
        cwd=cwd,
        env=full_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    proc._buttress_log = log  # type: ignore[attr-defined]
    try:
        wait_for_port(port, proc)
    except BaseException:
        stop(proc)
        raise
    return proc, port


@pytest.fixture
def redis_server() -> Iterator[Any]:
    """A real Redis (``BUTTRESS_TEST_REDIS_URL`` or a fresh redis-server); ``.url``, ``.stop()``."""
    from tests.redis_server import redis_server as _redis_server

    yield from _redis_server()


@pytest.fixture
def sentry_ingest() -> Iterator[Any]:
    """A local Sentry ingest (tests/sentry_ingest.py); the Sentry client is closed after."""
    import sentry_sdk

    from tests.sentry_ingest import sentry_ingest as start_ingest

    with start_ingest() as ingest:
        try:
            yield ingest
        finally:
            sentry_sdk.get_client().close()
            sentry_sdk.Scope.get_global_scope().set_client(None)
