"""Call an ASGI app directly with a hand-made scope: for inputs no HTTP client will send."""

from __future__ import annotations

import asyncio
from typing import Any


def http_scope(
    path: str = "/ok",
    method: str = "GET",
    headers: list[tuple[bytes, bytes]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("utf-8", "surrogateescape"),
        "root_path": "",
        "query_string": b"",
        "headers": headers if headers is not None else [(b"host", b"testserver")],
        "client": ("198.51.100.9", 40000),
        "server": ("127.0.0.1", 8000),
    }
    scope.update(extra)
    return scope


async def call(
    app: Any,
    scope: dict[str, Any],
    body: bytes = b"",
    *,
    sent: list[dict[str, Any]] | None = None,
    stay_connected: bool = False,
) -> list[dict[str, Any]]:
    """Run one request and return every message the app sent (also collected in ``sent``).

    After the body, ``receive`` answers ``http.disconnect`` at once, or, with
    ``stay_connected``, waits like a client that stays until the response is complete
    (frameworks that watch for a disconnect would otherwise abort the request).
    """
    messages: list[dict[str, Any]] = [] if sent is None else sent
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        if stay_connected:
            await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    await app(scope, receive, send)
    return messages


def response_headers(messages: list[dict[str, Any]]) -> dict[bytes, bytes]:
    start = next(m for m in messages if m["type"] == "http.response.start")
    return dict(start["headers"])


def status_of(messages: list[dict[str, Any]]) -> int:
    return int(next(m for m in messages if m["type"] == "http.response.start")["status"])
