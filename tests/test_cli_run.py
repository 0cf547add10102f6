"""`buttress run` takes what uvicorn users type from habit, and refuses a wrong target early."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, _output, free_port, start_server, stop

APPS = textwrap.dedent(
    """
    import logging

    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route


    def create_app():
        async def hello(request):
            logging.getLogger("userapp").debug("debug line from the app")
            return PlainTextResponse(VERSION)

        return Starlette(routes=[Route("/", hello)])


    def create_with(config):
        return create_app()


    async def create_async():
        return create_app()


    def create_number():
        return 42


    async def asgi(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": VERSION.encode()})


    app = create_app()
    number = 42
    VERSION = "v1"
    """
)


def _write_apps(directory: Path, version: str = "v1") -> None:
    text = APPS.replace('VERSION = "v1"', f"VERSION = {version!r}")
    (directory / "userapps.py").write_text(text, encoding="utf-8")


@pytest.fixture
def apps_dir(tmp_path: Path) -> Path:
    """A directory holding `userapps.py`, the user's module, outside the repository."""
    _write_apps(tmp_path)
    return tmp_path


def _cli(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BUTTRESS_")}
    return subprocess.run(
        [sys.executable, "-m", "buttress.cli", *args],
        cwd=cwd,
        env={**clean, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _serve(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], int]:
    """Start `buttress run ARGS` in ``cwd`` (the user's project) and wait until it listens."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BUTTRESS_")}
    return start_server(["-m", "buttress.cli", "run", *args], env, cwd=cwd, base_env=clean)


def _until(check: Callable[[], bool], what: str, proc: subprocess.Popen[Any]) -> None:
    deadline = time.monotonic() + 30
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {_output(proc)}")
        time.sleep(0.1)


def _get(port: int, path: str = "/", **kwargs: Any) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=10, **kwargs)


# --- habits that are accepted ---------------------------------------------------------


@pytest.mark.parametrize("argv", [["--version"], ["run", "--version"]])
def test_version_prints_buttress_version(apps_dir: Path, argv: list[str]) -> None:
    """`buttress --version` and `buttress run --version` print buttress's version."""
    from importlib.metadata import version

    result = _cli(apps_dir, *argv)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"buttress {version('buttress')}"


@pytest.mark.slow
@pytest.mark.parametrize("flag", [[], ["--factory"]])
def test_a_factory_is_called_and_served(apps_dir: Path, flag: list[str]) -> None:
    """`buttress run mod:create_app` (with or without --factory) serves what the factory returns."""
    proc, port = _serve(apps_dir, "userapps:create_app", *flag, "--port", "{port}")
    try:
        response = _get(port)
    finally:
        stop(proc)
    assert response.status_code == 200 and response.text == "v1"
    assert response.headers["x-request-id"]  # wrapped in the stack


@pytest.mark.slow
def test_log_level_option_wins_over_the_environment(apps_dir: Path) -> None:
    """`--log-level debug` shows the app's debug lines even with BUTTRESS_LOG_LEVEL=warning."""
    proc, port = _serve(
        apps_dir,
        "userapps:create_app",
        "--log-level",
        "DEBUG",
        "--port",
        "{port}",
        env={"BUTTRESS_LOG_LEVEL": "warning"},
    )
    try:
        _get(port)
    finally:
        output = stop(proc)
    assert "debug line from the app" in output


@pytest.mark.slow
def test_options_after_double_dash_reach_uvicorn(apps_dir: Path) -> None:
    """Options after `--` go to uvicorn: `--header` adds a header, keep-alive is accepted."""
    proc, port = _serve(
        apps_dir,
        "userapps:asgi",
        "--port",
        "{port}",
        "--",
        "--header",
        "x-served-by:buttress",
        "--timeout-keep-alive",
        "2",
        "--h11-max-incomplete-event-size",
        "16384",
    )
    try:
        response = _get(port)
    finally:
        stop(proc)
    assert response.status_code == 200
    assert response.headers["x-served-by"] == "buttress"


@pytest.mark.slow
def test_limit_concurrency_after_double_dash_sheds_load(apps_dir: Path) -> None:
    """`-- --limit-concurrency 1` makes uvicorn answer 503 once one connection is open."""
    proc, port = _serve(
        apps_dir, "userapps:asgi", "--port", "{port}", "--", "--limit-concurrency", "1"
    )
    try:
        response = _get(port)
    finally:
        stop(proc)
    assert response.status_code == 503  # this request's own connection reaches the limit


@pytest.mark.slow
def test_reload_serves_the_changed_code_and_prints_the_panel_once(apps_dir: Path) -> None:
    """`--reload` serves the edited module without a restart; the dev panel is printed once."""
    proc, port = _serve(
        apps_dir,
        "userapps:asgi",
        "--reload",
        "--port",
        "{port}",
        "--",
        "--reload-dir",
        str(apps_dir),
        env={"BUTTRESS_ENV": "development"},
    )
    try:
        assert _get(port).text == "v1"
        _write_apps(apps_dir, "v2")

        def changed() -> bool:
            try:
                return _get(port).text == "v2"
            except httpx.TransportError:  # the server is between two processes
                return False

        _until(changed, "the reloaded code", proc)
    finally:
        output = stop(proc)
    assert output.count("development mode") == 1, output


@pytest.mark.slow
def test_two_workers_print_the_development_panel_once() -> None:
    """`--workers 2` in development prints the start-up panel once, not once per worker."""
    proc, port = start_server(
        ["-m", "buttress.cli", "run", "tests.served:app", "--workers", "2", "--port", "{port}"],
        env={"BUTTRESS_ENV": "development", "SENTRY_DSN": "http://public@127.0.0.1:9/1"},
    )
    try:
        _until(lambda: _output(proc).count("Started server process") == 2, "two workers", proc)
        assert _get(port, "/ok").status_code == 200
    finally:
        output = stop(proc)
    assert output.count("development mode") == 1, output
    assert "sentry           on" in output  # as the workers will report


def test_env_file_after_double_dash_is_checked_before_start(apps_dir: Path) -> None:
    """`-- --env-file .env` is read before the settings, so a bad value in it stops start-up."""
    (apps_dir / ".env").write_text("BUTTRESS_ENV=staging\n", encoding="utf-8")
    result = _cli(apps_dir, "run", "userapps:app", "--", "--env-file", ".env")
    assert result.returncode == 2
    assert "BUTTRESS_ENV='staging': expected one of production, development" in result.stderr


# --- targets that are refused at start-up ---------------------------------------------


@pytest.mark.parametrize(
    ("target", "flag", "said"),
    [
        ("userapps:number", [], "userapps:number is 42 (an int): expected an ASGI app"),
        ("userapps:create_number", [], "userapps:create_number() returned 42 (an int)"),
        ("userapps:create_number", ["--factory"], "returned 42 (an int)"),
        (
            "userapps:create_with",
            [],
            "userapps:create_with is a function that takes 1 required argument",
        ),
        ("userapps:create_async", [], "returned an awaitable; a factory must be a plain"),
        ("userapps:asgi", ["--factory"], "it looks like the app itself: drop --factory"),
    ],
)
def test_a_target_that_is_not_an_app_exits_2_saying_what_it_is(
    apps_dir: Path, target: str, flag: list[str], said: str
) -> None:
    """A target that is neither an ASGI app nor a factory stops start-up with what was found."""
    result = _cli(apps_dir, "run", target, *flag, "--port", str(free_port()))
    assert result.returncode == 2, result.stdout + result.stderr
    assert said in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_wrong_target_fails_before_any_worker_starts(apps_dir: Path, workers: str) -> None:
    """With one worker or several, `x = 42` is refused once, before uvicorn starts."""
    result = _cli(apps_dir, "run", "userapps:number", "--workers", workers)
    assert result.returncode == 2
    assert result.stderr.count("is 42 (an int)") == 1
    assert "Uvicorn running" not in result.stdout + result.stderr


# --- habits that are refused, with the reason -------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["--proxy-headers"],
        ["--", "--proxy-headers"],
        ["--", "--forwarded-allow-ips", "*"],
        ["--forwarded-allow-ips=*"],
    ],
)
def test_proxy_headers_are_refused_with_the_reason(apps_dir: Path, argv: list[str]) -> None:
    """Uvicorn's proxy headers are refused: buttress resolves the client from trusted proxies."""
    result = _cli(apps_dir, "run", "userapps:app", *argv)
    assert result.returncode == 2
    assert "BUTTRESS_TRUSTED_PROXIES" in result.stderr
    assert "choose its own IP" in result.stderr or "which proxies to believe" in result.stderr


def test_no_proxy_headers_after_double_dash_is_accepted_as_what_buttress_does(
    apps_dir: Path,
) -> None:
    """`-- --no-proxy-headers` is not refused: it is what buttress run does anyway."""
    result = _cli(apps_dir, "run", "userapps:number", "--", "--no-proxy-headers")
    assert "is 42 (an int)" in result.stderr  # got as far as checking the target
    assert "not accepted" not in result.stderr


def test_a_uvicorn_option_before_double_dash_says_where_it_goes(apps_dir: Path) -> None:
    """`--timeout-keep-alive 5` before `--` exits 2 showing the `-- --timeout-keep-alive` form."""
    result = _cli(apps_dir, "run", "userapps:app", "--timeout-keep-alive", "5")
    assert result.returncode == 2
    assert "buttress run userapps:app -- --timeout-keep-alive" in result.stderr


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--", "--port", "9"], "--port is an option of buttress run itself: write it before --"),
        (["--", "--no-such-option"], "No such option"),
        (["--reload", "--workers", "2"], "cannot be combined with --workers"),
        (["--log-level", "trace"], "invalid choice: 'trace'"),
    ],
)
def test_run_usage_errors_say_what_to_write(apps_dir: Path, argv: list[str], said: str) -> None:
    """Conflicting or unknown options exit 2 with a message saying what to write instead."""
    result = _cli(apps_dir, "run", "userapps:app", *argv)
    assert result.returncode == 2
    assert said in result.stderr


def test_uvicorn_help_is_shown_after_double_dash(apps_dir: Path) -> None:
    """`buttress run app -- --help` lists the uvicorn options that can follow `--`."""
    result = _cli(apps_dir, "run", "userapps:app", "--", "--help")
    assert result.returncode == 0, result.stderr
    assert "--limit-concurrency" in result.stdout and "--timeout-keep-alive" in result.stdout
