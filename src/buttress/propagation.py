"""Outgoing propagation: the current request id and trace travel on every call your service makes.

The next service logs the same request id, and its traces join this one::

    import httpx
    from buttress.propagation import httpx_event_hooks

    client = httpx.AsyncClient(event_hooks=httpx_event_hooks(async_client=True))

    import requests
    from buttress.propagation import propagate_requests

    session = propagate_requests(requests.Session())

Outside a request (a background job, start-up) nothing is added. A header the caller set
itself is kept. ``traceparent`` is sent only when the incoming request carried one: the
same trace id with a fresh span id for the outgoing call, and the incoming flags.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from buttress.context import _current

__all__ = ["httpx_event_hooks", "outgoing_headers", "propagate_requests"]


def outgoing_headers(request_id_header: str = "X-Request-ID") -> dict[str, str]:
    """The headers an outgoing call made while serving the current request should carry."""
    record = _current.get()
    if record is None:
        return {}
    out = {request_id_header: record.request_id}
    if record.trace_id is not None:
        flags = record.trace_flags or "01"
        out["traceparent"] = f"00-{record.trace_id}-{os.urandom(8).hex()}-{flags}"
    return out


def _apply(headers: MutableMapping[str, str], name: str) -> None:
    for key, value in outgoing_headers(name).items():
        if key not in headers:  # httpx and requests headers are case-insensitive
            headers[key] = value


def httpx_event_hooks(
    *, async_client: bool = False, request_id_header: str = "X-Request-ID"
) -> dict[str, list[Callable[[Any], Any]]]:
    """``event_hooks`` for ``httpx.Client`` (or ``httpx.AsyncClient`` with ``async_client``)."""
    if async_client:

        async def add_async(request: Any) -> None:
            _apply(request.headers, request_id_header)

        hook: Callable[[Any], Awaitable[None] | None] = add_async
    else:

        def add(request: Any) -> None:
            _apply(request.headers, request_id_header)

        hook = add
    return {"request": [hook]}


def propagate_requests(session: Any, *, request_id_header: str = "X-Request-ID") -> Any:
    """Make every request ``session`` (a ``requests.Session``) sends carry the headers."""
    send = session.send

    def send_with_headers(prepared: Any, **kwargs: Any) -> Any:
        _apply(prepared.headers, request_id_header)
        return send(prepared, **kwargs)

    session.send = send_with_headers
    return session
