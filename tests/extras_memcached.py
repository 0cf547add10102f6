"""`pip install 'buttress[memcached]'` is enough for `memcached://` limits (make extras).

Not collected by `make unit` (the file name does not start with `test_`): it builds a fresh
virtual environment with only that extra, from the package index, which takes about
20 seconds. Run it with `python -m pytest -p no:xdist tests/extras_memcached.py`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import textwrap
import time
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port

CLIENT = textwrap.dedent(
    """
    import asyncio
    import sys

    import buttress


    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


    stack = buttress.wrap(
        app,
        rate_limit="2/minute",
        rate_limit_storage=sys.argv[1],
        metrics=False,
        configure_logging=False,
    )


    async def status() -> int:
        sent = []

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            sent.append(message)

        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "GET", "scheme": "http", "path": "/items", "raw_path": b"/items",
            "query_string": b"", "root_path": "", "headers": [],
            "client": ("203.0.113.9", 50000), "server": ("testserver", 80),
        }
        await stack(scope, receive, send)
        return sent[0]["status"]


    async def main():
        print([await status() for _ in range(3)])


    asyncio.run(main())
    """
)


@pytest.fixture
def memcached() -> Iterator[int]:
    """A real memcached on a free 127.0.0.1 port (Debian package `memcached`)."""
    port = free_port()
    user = ["-u", "root"] if os.geteuid() == 0 else []
    proc = subprocess.Popen(["memcached", "-l", "127.0.0.1", "-p", str(port), "-U", "0", *user])
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"memcached did not listen on {port}") from None
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _items(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"stats\r\n")
        data = b""
        while not data.endswith(b"END\r\n"):
            data += sock.recv(4096)
    stats = dict(line.split(" ")[1:3] for line in data.decode().splitlines() if " " in line)
    return int(stats["curr_items"])


def test_memcached_extra_is_all_a_memcached_storage_needs(tmp_path: Path, memcached: int) -> None:
    """In a fresh venv with only `buttress[memcached]`, a memcached limit answers 429 in time."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = str(env_dir / "bin" / "python")
    install = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", f"{ROOT}[memcached]"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    script = tmp_path / "client.py"
    script.write_text(CLIENT, encoding="utf-8")
    result = subprocess.run(
        [python, str(script), f"memcached://127.0.0.1:{memcached}"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH" and "BUTTRESS_" not in k},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[200, 200, 429]", result.stdout + result.stderr
    assert _items(memcached) > 0  # the counters live in memcached, not in the process
