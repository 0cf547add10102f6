"""The README's install command works on a fresh machine: a wheel of this checkout (make extras).

Not collected by `make unit` (the file name does not start with `test_`): it builds a wheel
and a fresh virtual environment from the package index, about half a minute.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import httpx

from tests.conftest import ROOT, free_port, stop, wait_for_port

APP = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})
"""


def test_wheel_with_the_server_extra_serves_a_wrapped_app(tmp_path: Path) -> None:
    """`make wheel` then `pip install 'dist/buttress-*.whl[server]'` gives a working `buttress run`."""
    dist = tmp_path / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = dist.glob("buttress-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = str(env_dir / "bin" / "python")
    install = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", f"{wheel}[server]"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and "BUTTRESS_" not in k}
    version = subprocess.run(
        [str(env_dir / "bin" / "buttress"), "--version"], capture_output=True, text=True, env=env
    )
    assert version.stdout.startswith("buttress "), version.stdout + version.stderr
    (tmp_path / "hello.py").write_text(APP, encoding="utf-8")
    port = free_port()
    log = (tmp_path / "server.log").open("w+")
    proc = subprocess.Popen(
        [str(env_dir / "bin" / "buttress"), "run", "hello:app", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    proc._buttress_log = log  # type: ignore[attr-defined]
    try:
        wait_for_port(port, proc)
        response = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
    finally:
        output = stop(proc)
    assert response.status_code == 200 and response.text == "hello"
    assert response.headers["x-request-id"]
    assert '"event":"request"' in output.replace(" ", "")  # one JSON access line
