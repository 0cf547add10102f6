"""The buttress command: run any app under uvicorn with the stack, show settings, refuse bad ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest

from tests.apps import FRAMEWORKS
from tests.conftest import ROOT, start_server, stop


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BUTTRESS_")}
    return subprocess.run(
        [sys.executable, "-m", "buttress.cli", *args],
        cwd=ROOT,
        env={**clean, "PYTHONPATH": str(ROOT), "COLUMNS": "200", **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_config_prints_settings_with_secrets_masked() -> None:
    """`buttress config` shows every variable and its value, never a secret."""
    result = _cli(
        "config", env={"BUTTRESS_METRICS_TOKEN": "hunter2", "BUTTRESS_LOG_LEVEL": "debug"}
    )
    assert result.returncode == 0, result.stderr
    assert "BUTTRESS_LOG_LEVEL" in result.stdout and "DEBUG" in result.stdout
    assert "BUTTRESS_METRICS_TOKEN" in result.stdout
    assert "hunter2" not in result.stdout


def test_config_refuses_a_bad_environment() -> None:
    """A bad variable makes `buttress config` exit non-zero with the clear message."""
    result = _cli("config", env={"BUTTRESS_ENV": "staging"})
    assert result.returncode == 2
    assert "BUTTRESS_ENV='staging': expected one of production, development" in result.stderr


def test_config_shows_status_code_ranges_as_ranges() -> None:
    """`buttress config` shows the Sentry statuses as `409,500-599`, not a list of 100 codes."""
    result = _cli("config", env={"BUTTRESS_SENTRY_STATUS_CODES": "409,500-599"})
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if "SENTRY_STATUS_CODES" in line)
    assert "409,500-599" in row and "501" not in row


def test_config_fits_the_terminal_width() -> None:
    """`buttress config` in an 80-column terminal prints no line wider than 80 columns."""
    result = _cli(
        "config",
        env={
            "COLUMNS": "80",
            "BUTTRESS_RATE_LIMITS": '{"/orders/{order_id}/pay": "5/minute", "/login": "10/hour"}',
        },
    )
    assert result.returncode == 0, result.stderr
    assert max(len(line) for line in result.stdout.splitlines()) <= 80, result.stdout
    assert "…" not in result.stdout  # long values fold onto more lines, never cut


def test_config_says_whether_sentry_is_on_without_its_key() -> None:
    """`buttress config` shows Sentry on, with where it reports, and never the DSN's key."""
    dsn = "https://0123456789abcdef@o42.ingest.example.com/7"
    on = _cli("config", env={"SENTRY_DSN": dsn})
    off = _cli("config", env={"SENTRY_DSN": ""})
    assert on.returncode == 0 and off.returncode == 0, on.stderr + off.stderr
    row = next(line for line in on.stdout.splitlines() if "SENTRY_DSN" in line)
    assert "on, https://***@o42.ingest.example.com/7" in row
    assert "0123456789abcdef" not in on.stdout
    row = next(line for line in off.stdout.splitlines() if "SENTRY_DSN" in line)
    assert "off (set SENTRY_DSN to report errors)" in row


def test_unknown_variable_warning_is_the_message_alone() -> None:
    """A typo in a variable prints one line naming it and the likely setting, no Python source."""
    result = _cli("config", env={"BUTTRESS_RATELIMIT": "10/minute"})
    assert result.returncode == 0, result.stderr
    assert result.stderr == (
        "BUTTRESS_RATELIMIT is not a buttress setting and is ignored; "
        "did you mean BUTTRESS_RATE_LIMIT?\n"
    )


def test_unknown_variable_warning_is_still_a_config_warning() -> None:
    """Tests and filters still catch the unknown-variable warning as a ConfigWarning."""
    import warnings

    from buttress.config import ConfigWarning, Settings

    before = warnings.formatwarning
    with pytest.warns(ConfigWarning, match="BUTTRESS_RATELIMIT is not a buttress setting"):
        Settings.from_env({"BUTTRESS_RATELIMIT": "10/minute"})
    assert warnings.formatwarning is before  # the process's own warnings keep their format


def test_run_refuses_an_unloadable_app() -> None:
    """`buttress run` names the target it could not import and exits non-zero."""
    result = _cli("run", "no_such_module_xyz:app")
    assert result.returncode == 2
    assert "cannot load 'no_such_module_xyz:app'" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_run_serves_any_app_with_the_stack_over_tcp(framework: str) -> None:
    """`buttress run MODULE:ATTR` serves each framework's unchanged app with ids, JSON access logs and route labels."""
    proc, port = start_server(
        ["-m", "buttress.cli", "run", "tests.served:app", "--port", "{port}"],
        env={"TEST_FRAMEWORK": framework},
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            ok = client.get("/items/42", headers={"X-Request-ID": "tcp-1"})
            missing = client.get("/nope")
    finally:
        output = stop(proc)
    assert ok.status_code == 200 and ok.json() == {"item_id": "42"}
    assert ok.headers["x-request-id"] == "tcp-1"
    assert missing.status_code == 404 and missing.headers["x-request-id"]
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    access = [line for line in lines if line.get("logger") == "buttress.access"]
    assert [(a["path"], a["status"]) for a in access] == [("/items/42", 200), ("/nope", 404)]
    assert access[0]["request_id"] == "tcp-1"
    assert access[0]["route"] == ("<unmatched>" if framework == "raw" else "/items/{item_id}")
    assert access[0]["client_ip"] == "127.0.0.1"
    # one format per process: uvicorn's own lines are JSON too, and it writes no access line of its own
    assert all(line.startswith("{") for line in output.splitlines() if line.strip()), output


@pytest.mark.slow
def test_already_wrapped_app_is_not_wrapped_twice() -> None:
    """Serving `app = buttress.wrap(app)` under uvicorn logs each request exactly once."""
    proc, port = start_server(
        ["-m", "uvicorn", "tests.served:wrapped", "--port", "{port}"],
        env={"TEST_WRAPPED": "1"},
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            client.get("/ok")
    finally:
        output = stop(proc)
    access = [line for line in output.splitlines() if '"buttress.access"' in line]
    assert len(access) == 1, output
