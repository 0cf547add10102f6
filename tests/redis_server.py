"""A real Redis for tests: ``BUTTRESS_TEST_REDIS_URL`` when set, else our own redis-server.

Our own server runs on a free port with a temp dir and no persistence, so tests under
xdist never share state, and it can be stopped and restarted on the same port to test
outages. When ``CI=true`` a missing Redis fails the run instead of skipping.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _missing(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; CI=true requires a real Redis", pytrace=False)
    pytest.skip(reason)


class RedisServer:
    """One redis-server process we own (or an external URL we may not stop)."""

    def __init__(self, url: str | None = None) -> None:
        self.external = url is not None
        self.port = 0 if url else _free_port()
        self.url = url or f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir: str | None = None

    def start(self) -> None:
        """Start redis-server on our port and wait until it answers PING."""
        if self.external:
            return
        binary = shutil.which("redis-server")
        if binary is None:
            _missing("redis-server is not installed and BUTTRESS_TEST_REDIS_URL is not set")
            return
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="buttress-redis-")
        self.proc = subprocess.Popen(
            [
                binary,
                "--save",
                "",
                "--appendonly",
                "no",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                self._dir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait_ping()

    def _wait_ping(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        raise TimeoutError(f"redis-server did not answer on port {self.port} in {timeout}s")

    def stop(self) -> None:
        """Stop the server (an outage); the port stays ours for ``start()``."""
        if self.external:
            pytest.skip("cannot stop an external Redis (BUTTRESS_TEST_REDIS_URL)")
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def flush(self) -> None:
        """Remove every key (an external Redis is shared, so tests use fresh prefixes too)."""
        import redis

        client = redis.Redis.from_url(self.url)
        try:
            client.flushdb()
        finally:
            client.close()

    def close(self) -> None:
        if not self.external:
            self.stop()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)


def redis_server() -> Iterator[RedisServer]:
    """Generator behind the ``redis_server`` fixture (see conftest.py)."""
    server = RedisServer(os.environ.get("BUTTRESS_TEST_REDIS_URL") or None)
    try:
        server.start()
        yield server
    finally:
        server.close()
