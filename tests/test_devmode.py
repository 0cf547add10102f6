"""Development mode: rich tracebacks with locals in the console, never in JSON; the start-up panel."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sentry_sdk
import structlog
from rich.console import Console

import buttress
from buttress.devmode import print_startup_summary, startup_summary
from tests.apps import SECRET, _boom, build


@pytest.fixture
def restore_root_logging() -> Iterator[None]:
    """configure_logging adds a root handler; remove it after the test."""
    yield
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_buttress_handler", False):
            root.removeHandler(handler)


def log_boom(stream: io.StringIO, **settings: Any) -> str:
    """Configure logging to ``stream``, log the exception ``_boom`` raises, return the output."""
    from buttress.stack import logging_options

    options = logging_options(buttress.Settings.from_env({}, **settings))
    buttress.configure_logging(**options, stream=stream)
    try:
        _boom()
    except RuntimeError:
        structlog.get_logger("app").exception("handler failed")
        logging.getLogger("app.stdlib").exception("handler failed (stdlib)")
    return stream.getvalue()


def test_production_json_log_never_shows_locals(restore_root_logging: None) -> None:
    """In production JSON logs, a secret held in a local variable never appears."""
    out = log_boom(io.StringIO())
    assert "RuntimeError" in out
    assert "boom with 16 chars" in out
    assert "_boom" in out  # the frames are there, only the locals are not
    assert SECRET not in out
    assert "password" not in out


def test_json_log_has_no_locals_even_in_development(restore_root_logging: None) -> None:
    """BUTTRESS_LOG_FORMAT=json in development still keeps locals out of the output."""
    out = log_boom(io.StringIO(), env="development", log_format="json")
    assert "RuntimeError" in out
    assert SECRET not in out


def test_development_console_shows_a_rich_traceback_with_locals(
    restore_root_logging: None,
) -> None:
    """In development the console gets a rich traceback that shows the frame's locals."""
    out = log_boom(io.StringIO(), env="development")
    assert "Traceback" in out
    assert "RuntimeError" in out
    assert "password" in out
    assert SECRET in out
    # Both structlog and standard-library records get the rich rendering.
    assert out.count(SECRET) >= 2


def test_development_console_without_locals_when_format_is_console_in_production(
    restore_root_logging: None,
) -> None:
    """A console log format in production renders tracebacks but not locals."""
    out = log_boom(io.StringIO(), log_format="console")
    assert "RuntimeError" in out
    assert SECRET not in out


def test_rich_traceback_is_120_columns_wide(restore_root_logging: None) -> None:
    """The development traceback is drawn 120 columns wide, whatever the terminal."""
    out = log_boom(io.StringIO(), env="development")
    import re

    plain = re.sub(r"\x1b\[[0-9;]*m", "", out)
    widths = {len(line) for line in plain.splitlines() if line.startswith("╭")}
    assert widths == {120}


async def test_unhandled_request_error_keeps_secrets_out_of_production_logs(logs: Any) -> None:
    """A request that crashes with a secret in a local logs the error, not the secret."""
    app = buttress.wrap(build("starlette"), configure_logging=False)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.get("/boom")
    assert response.status_code == 500
    assert "RuntimeError" in logs.text  # the error layer logs the exception (issue 3)
    assert SECRET not in logs.text


# --- the start-up panel -----------------------------------------------------------------


def render(settings: buttress.Settings) -> str:
    console = Console(file=io.StringIO(), width=100, color_system=None)
    console.print(startup_summary(settings))
    return console.file.getvalue()  # type: ignore[attr-defined]


def row(text: str, name: str) -> str:
    """The panel row whose first column is ``name``."""
    for line in text.splitlines():
        cells = line.strip("│ ").split(None, 1)
        if line.strip("│ ").startswith(name + " ") or (cells and cells[0] == name):
            return line
    raise AssertionError(f"no {name!r} row in:\n{text}")


def test_startup_summary_lists_what_is_active() -> None:
    """The panel names env, log format, metrics path, limits, Sentry and retries."""
    settings = buttress.Settings.from_env(
        {},
        env="development",
        rate_limit="100/minute",
        rate_limits={"POST /login": "5/minute"},
        metrics_path="/internal/metrics",
    )
    text = render(settings)
    assert "buttress" in text.splitlines()[0]
    assert "development" in row(text, "env")
    assert "console" in row(text, "logs")
    assert "locals" in row(text, "logs")
    assert "/internal/metrics" in row(text, "metrics")
    limits = text[text.index("rate limits") :]
    assert "100/minute per ip" in limits
    assert "POST /login: 5/minute" in limits
    assert "memory://" in limits
    assert "off" in row(text, "sentry")
    assert "3 attempts" in row(text, "retries")


def test_startup_summary_shows_disabled_layers_and_production_format() -> None:
    """Metrics off, no limits and JSON logs are said plainly."""
    text = render(buttress.Settings.from_env({}, metrics=False))
    assert "json" in row(text, "logs")
    assert "locals" not in row(text, "logs")
    assert row(text, "metrics").split()[-2] == "off"
    assert "off" in row(text, "rate limits")


def test_startup_summary_masks_storage_credentials() -> None:
    """A rate-limit storage URI with a password is shown without it."""
    settings = buttress.Settings.from_env(
        {}, rate_limit="10/second", rate_limit_storage="redis://user:hunter2@cache:6379/0"
    )
    text = render(settings)
    assert "hunter2" not in text
    assert "redis://***@cache:6379/0" in text


def test_startup_summary_shows_sentry_on_when_a_client_is_active() -> None:
    """With an active Sentry client the panel says Sentry is on and which statuses it gets."""
    client = sentry_sdk.Client(
        dsn="http://public@127.0.0.1:9/1",
        default_integrations=False,
        auto_enabling_integrations=False,
    )
    sentry_sdk.get_global_scope().set_client(client)
    try:
        text = render(buttress.Settings.from_env({}, sentry_status_codes="409,500-599"))
    finally:
        client.close()
        sentry_sdk.get_global_scope().set_client(None)
    assert "on, statuses 409,500-599" in row(text, "sentry")


def test_startup_summary_values_are_not_rich_markup() -> None:
    """Brackets in a value (a path pattern) are printed as written, not read as markup."""
    settings = buttress.Settings.from_env({}, rate_limits={"/files/[bold]x": "1/second"})
    assert "/files/[bold]x" in render(settings)


def test_print_startup_summary_writes_the_panel_to_a_console() -> None:
    """print_startup_summary prints the panel once to the given console."""
    console = Console(file=io.StringIO(), width=100, color_system=None)
    print_startup_summary(buttress.Settings.from_env({}, env="development"), console=console)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert text.count("╭") == 1
    assert "development mode" in text


# --- short tracebacks, drawn off the event loop -------------------------------------------


async def test_development_traceback_shows_the_users_frames_only(
    restore_root_logging: None,
) -> None:
    """A request's traceback in development shows the app's frames with locals, not the library's."""
    from starlette.applications import Starlette
    from starlette.routing import Route

    from buttress.devmode import wait_for_tracebacks

    async def boom(request: Any) -> Any:
        _boom()

    stream = io.StringIO()
    app = buttress.wrap(
        Starlette(routes=[Route("/boom", boom)]),
        env="development",
        configure_logging=False,
        metrics=False,
    )
    buttress.configure_logging(log_format="console", show_locals=True, stream=stream)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        assert (await client.get("/boom")).status_code == 500
    wait_for_tracebacks()
    import re

    out = re.sub(r"\x1b\[[0-9;]*m", "", stream.getvalue())
    block = out[out.index("Traceback (most recent call last)") :]
    assert "tests/apps.py" in block and SECRET in block  # the user's frame, with its locals
    assert "site-packages" not in block and "src/buttress" not in block
    assert "library frames hidden" in block
    assert len(block.splitlines()) < 60


def test_a_request_error_in_development_does_not_hold_up_other_requests(
    tmp_path: Any,
) -> None:
    """Under uvicorn in development, another request is served while a traceback is drawn."""
    from tests import servers

    gate = tmp_path / "gate"
    env = {"LOGGING_APP": "devmode", "BUTTRESS_ENV": "development", "GATE_FILE": str(gate)}
    proc, port = servers.start("uvicorn", "tests.logging_served:app", env=env)
    try:
        # /boom's traceback shows a local whose repr waits until /ok has been served: drawn
        # on the event loop, /ok could not be served until that wait gave up.
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            assert client.get("/boom").status_code == 500
            assert client.get("/ok").status_code == 200
        # The traceback is written by a worker thread; let it finish before the server stops
        # (uvicorn ends a single process by re-raising SIGTERM, which skips exit handlers).
        deadline = time.monotonic() + 30
        while "RuntimeError: devmode boom" not in servers.output(proc):
            assert time.monotonic() < deadline, servers.output(proc)
            time.sleep(0.05)
    finally:
        out = servers.stop(proc)
    assert "<gate opened by /ok>" in out
    assert "<gate never opened>" not in out
    block = out[out.index("Traceback (most recent call last)") :]
    block = block[: block.index("RuntimeError: devmode boom")]
    lines = block.splitlines()
    assert len(lines) < 50
    first_frame = next(i for i, line in enumerate(lines) if "logging_served.py" in line)
    assert first_frame < 5  # the user's frame is on the first screen
    assert "visible-in-development" in block  # with its locals
    assert "site-packages" not in block and "src/buttress" not in block  # no library frames
    assert "library frames hidden" in out
