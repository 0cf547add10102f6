"""A tiny local Sentry ingest: the real sentry-sdk sends envelopes to it over HTTP.

Use ``with sentry_ingest() as ingest:`` (or the ``sentry_ingest`` fixture in conftest),
point the SDK at ``ingest.dsn``, then ``sentry_sdk.flush()`` and read ``ingest.events``.
The server listens on a free 127.0.0.1 port in a daemon thread and is shut down on exit.
"""

from __future__ import annotations

import gzip
import json
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class SentryIngest:
    """What the server received: raw envelopes (decompressed) and the parsed items."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.dsn = f"http://public@127.0.0.1:{port}/1"
        self.raw: list[bytes] = []
        self.items: list[tuple[dict[str, Any], Any]] = []  # (item header, payload)
        self._cond = threading.Condition()

    @property
    def events(self) -> list[dict[str, Any]]:
        """Error events (``type`` ``event``), in arrival order."""
        with self._cond:
            return [p for h, p in self.items if h.get("type") == "event"]

    @property
    def transactions(self) -> list[dict[str, Any]]:
        with self._cond:
            return [p for h, p in self.items if h.get("type") == "transaction"]

    @property
    def raw_text(self) -> str:
        with self._cond:
            return b"\n".join(self.raw).decode("utf-8", "replace")

    def wait_for_events(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Block until at least ``count`` error events arrived (or raise TimeoutError)."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.events_unlocked()) >= count, timeout):
                raise TimeoutError(f"expected {count} events, got {len(self.events_unlocked())}")
            return self.events_unlocked()

    def events_unlocked(self) -> list[dict[str, Any]]:
        return [p for h, p in self.items if h.get("type") == "event"]

    def clear(self) -> None:
        with self._cond:
            self.raw.clear()
            self.items.clear()

    def _store(self, body: bytes) -> None:
        items = parse_envelope(body)
        with self._cond:
            self.raw.append(body)
            self.items.extend(items)
            self._cond.notify_all()


def parse_envelope(body: bytes) -> list[tuple[dict[str, Any], Any]]:
    """The ``(item header, payload)`` pairs of a Sentry envelope (JSON payloads parsed)."""
    out: list[tuple[dict[str, Any], Any]] = []
    _header, _, rest = body.partition(b"\n")
    while rest.strip():
        line, _, rest = rest.partition(b"\n")
        if not line.strip():
            continue
        item = json.loads(line)
        length = item.get("length")
        if length is None:
            payload, _, rest = rest.partition(b"\n")
        else:
            payload, rest = rest[:length], rest[length:]
            if rest.startswith(b"\n"):
                rest = rest[1:]
        try:
            out.append((item, json.loads(payload)))
        except ValueError:
            out.append((item, payload))
    return out


def _decompress(body: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    if encoding == "br":
        import brotli  # type: ignore[import-not-found]

        return bytes(brotli.decompress(body))
    return body


def _handler(ingest: SentryIngest) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            body = _decompress(body, self.headers.get("Content-Encoding") or "")
            if self.path.rstrip("/").endswith("/envelope"):
                ingest._store(body)
            payload = b'{"id":"00000000000000000000000000000000"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output clean

    return Handler


@contextmanager
def sentry_ingest() -> Iterator[SentryIngest]:
    """A running ingest on a free 127.0.0.1 port; stopped when the block exits."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(SentryIngest(0)))
    port = int(server.server_address[1])
    ingest = SentryIngest(port)
    server.RequestHandlerClass = _handler(ingest)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="sentry-ingest", daemon=True)
    thread.start()
    try:
        yield ingest
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
