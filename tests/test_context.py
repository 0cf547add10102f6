"""Request context: request ids, trace ids, client IPs and their isolation between requests."""

from __future__ import annotations

import asyncio
import ipaddress
import json
from typing import Any

import pytest
import structlog

import buttress
from buttress import RequestContextMiddleware, client_ip
from buttress.context import new_request_id, parse_traceparent, valid_request_id
from tests.asgi_driver import call, http_scope, response_headers
from tests.conftest import LogCapture, client_for


async def _json_ok(scope: Any, receive: Any, send: Any) -> None:
    structlog.get_logger("app").info("inside")
    body = json.dumps(
        {"request_id": buttress.get_request_id(), "ip": buttress.get_client_ip()}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def test_every_response_carries_a_fresh_request_id(
    app: Any, framework: str, logs: LogCapture
) -> None:
    """Without an incoming id, each response gets a new 32-hex id, the one app code sees."""
    stack = buttress.wrap(app, configure_logging=False)
    async with client_for(stack) as client:
        first = await client.get("/log")
        second = await client.get("/log")
    ids = [first.headers["x-request-id"], second.headers["x-request-id"]]
    assert ids[0] != ids[1]
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert first.json()["request_id"] == ids[0]
    handler_lines = logs.events("handler")
    assert [line["request_id"] for line in handler_lines] == ids


async def test_valid_incoming_request_id_is_kept(
    app: Any, framework: str, logs: LogCapture
) -> None:
    """A well-formed incoming X-Request-ID is used, echoed and logged."""
    stack = buttress.wrap(app, configure_logging=False)
    async with client_for(stack) as client:
        response = await client.get("/log", headers={"X-Request-ID": "req-abc.123:XYZ_9"})
    assert response.headers["x-request-id"] == "req-abc.123:XYZ_9"
    assert response.json()["request_id"] == "req-abc.123:XYZ_9"
    assert logs.access[-1]["request_id"] == "req-abc.123:XYZ_9"


@pytest.mark.parametrize(
    "bad",
    [
        b"x" * 129,  # oversized
        b"abc\r\nSet-Cookie: evil=1",  # CRLF injection
        b"caf\xc3\xa9",  # valid UTF-8, but not in the allowed set
        b"\xff\xfe\xfd",  # not UTF-8 at all
        b"",  # empty
        b"has space",
    ],
)
async def test_malformed_request_id_is_replaced(bad: bytes, logs: LogCapture) -> None:
    """An incoming id outside 1-128 chars of [A-Za-z0-9._:-] is replaced, never echoed."""
    stack = RequestContextMiddleware(_json_ok)
    messages = await call(stack, http_scope(headers=[(b"x-request-id", bad)]))
    echoed = response_headers(messages)[b"x-request-id"]
    assert echoed != bad and len(echoed) == 32
    assert json.loads(messages[-1]["body"])["request_id"] == echoed.decode()


async def test_custom_request_id_header(logs: LogCapture) -> None:
    """BUTTRESS_REQUEST_ID_HEADER picks the header that is read and echoed."""
    stack = RequestContextMiddleware(
        _json_ok, request_id_header="X-Correlation-ID"
    )
    messages = await call(stack, http_scope(headers=[(b"x-correlation-id", b"corr-1")]))
    headers = response_headers(messages)
    assert headers[b"x-correlation-id"] == b"corr-1"
    assert b"x-request-id" not in headers


def test_request_ids_are_uuid4_hex() -> None:
    """Fresh ids are version-4 UUIDs in hex, unique across calls."""
    import uuid

    ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(uuid.UUID(hex=i).version == 4 for i in ids)
    assert valid_request_id(b"a" * 128) == "a" * 128
    assert valid_request_id(b"a" * 129) is None


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"),
        ),
        (b"00-00000000000000000000000000000000-00f067aa0ba902b7-01", None),  # zero trace id
        (b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", None),  # zero span id
        (b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None),  # forbidden version
        (b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", None),  # upper case
        (b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", None),  # no flags
        (b"garbage", None),
        (b"\xff\x00", None),
    ],
)
def test_traceparent_parsing(header: bytes, expected: tuple[str, str] | None) -> None:
    """Only a valid W3C traceparent yields trace and span ids."""
    assert parse_traceparent(header) == expected


async def test_trace_ids_are_bound_to_log_lines(logs: LogCapture) -> None:
    """A valid traceparent puts trace_id and span_id on every line of the request."""
    stack = RequestContextMiddleware(_json_ok)
    tp = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    await call(stack, http_scope(headers=[(b"traceparent", tp)]))
    await call(stack, http_scope(headers=[(b"traceparent", b"00-bad")]))
    inside = logs.events("inside")
    assert inside[0]["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert inside[0]["span_id"] == "00f067aa0ba902b7"
    assert "trace_id" not in inside[1]


def _nets(*items: str) -> tuple[Any, ...]:
    return tuple(ipaddress.ip_network(i) for i in items)


@pytest.mark.parametrize(
    ("peer", "headers", "trusted", "expected"),
    [
        (
            "203.0.113.7",
            [(b"x-forwarded-for", b"1.2.3.4")],
            (),
            "203.0.113.7",
        ),  # no proxies trusted
        (
            "203.0.113.7",
            [(b"x-forwarded-for", b"1.2.3.4")],
            ("10.0.0.0/8",),
            "203.0.113.7",
        ),  # spoof from untrusted peer
        ("10.0.0.2", [(b"x-forwarded-for", b"1.2.3.4")], ("10.0.0.0/8",), "1.2.3.4"),
        (
            "10.0.0.2",
            [(b"x-forwarded-for", b"6.6.6.6, 1.2.3.4, 10.0.0.5")],
            ("10.0.0.0/8",),
            "1.2.3.4",
        ),  # right to left
        (
            "10.0.0.2",
            [(b"x-forwarded-for", b"1.2.3.4"), (b"x-forwarded-for", b"10.0.0.9")],
            ("10.0.0.0/8",),
            "1.2.3.4",
        ),
        (
            "10.0.0.2",
            [(b"forwarded", b'for=192.0.2.60;proto=http, for="[2001:db8::1]:4711"')],
            ("10.0.0.0/8",),
            "2001:db8::1",
        ),
        ("10.0.0.2", [(b"forwarded", b"for=192.0.2.60:8080")], ("10.0.0.0/8",), "192.0.2.60"),
        ("10.0.0.2", [(b"x-forwarded-for", b"garbage, 1.2.3.4")], ("10.0.0.0/8",), "1.2.3.4"),
        (
            "10.0.0.2",
            [(b"x-forwarded-for", b"1.2.3.4, garbage")],
            ("10.0.0.0/8",),
            "10.0.0.2",
        ),  # malformed nearest hop
        (
            "10.0.0.2",
            [(b"x-forwarded-for", b"10.0.0.3")],
            ("10.0.0.0/8",),
            "10.0.0.3",
        ),  # all hops trusted
        ("10.0.0.2", [], ("10.0.0.0/8",), "10.0.0.2"),
    ],
)
def test_client_ip_honours_only_trusted_proxies(
    peer: str, headers: list[Any], trusted: tuple[str, ...], expected: str
) -> None:
    """Forwarding headers count only from trusted peers, walked right to left past trusted hops."""
    scope = http_scope(headers=headers, client=(peer, 1234))
    # The header read is configured (BUTTRESS_FORWARDED_HEADER); these rows use the one
    # they were written for.
    header = "forwarded" if any(k == b"forwarded" for k, _ in headers) else "x-forwarded-for"
    assert client_ip(scope, _nets(*trusted), header) == expected


def test_client_ip_without_client_is_none() -> None:
    """A server that gives no peer address yields None, never a crash."""
    scope = http_scope()
    del scope["client"]
    assert client_ip(scope, _nets("10.0.0.0/8")) is None
    scope["client"] = None
    assert client_ip(scope) is None


async def test_spoofed_forwarded_for_does_not_change_logged_ip(logs: LogCapture) -> None:
    """An untrusted client cannot choose the IP written to its log lines."""
    stack = RequestContextMiddleware(_json_ok, trusted_proxies="10.0.0.0/8")
    messages = await call(stack, http_scope(headers=[(b"x-forwarded-for", b"1.1.1.1")]))
    assert json.loads(messages[-1]["body"])["ip"] == "198.51.100.9"
    assert logs.access[-1]["client_ip"] == "198.51.100.9"


async def test_hundreds_of_concurrent_requests_keep_their_own_ids(logs: LogCapture) -> None:
    """Under concurrency every log line carries the id of its own request, never another's."""

    async def slow_app(scope: Any, receive: Any, send: Any) -> None:
        log = structlog.get_logger("app")
        log.info("start", mine=buttress.get_request_id())
        await asyncio.sleep(0)  # let the other requests interleave
        await asyncio.sleep(0)
        log.info("end", mine=buttress.get_request_id())
        await _json_ok(scope, receive, send)

    stack = RequestContextMiddleware(slow_app)
    ids = [f"req-{i}" for i in range(300)]
    await asyncio.gather(
        *(call(stack, http_scope(headers=[(b"x-request-id", i.encode())])) for i in ids)
    )
    lines = logs.lines
    assert len(lines) == 300 * 4  # start, end, inside, access
    for line in lines:
        assert line["request_id"].startswith("req-")
        if "mine" in line:
            assert line["mine"] == line["request_id"]
    assert sorted({line["request_id"] for line in lines}) == sorted(ids)


async def test_context_is_cleared_after_the_request(logs: LogCapture) -> None:
    """Nothing bound for a request survives it in the task that served it."""
    stack = RequestContextMiddleware(_json_ok)
    await call(stack, http_scope(headers=[(b"x-request-id", b"first")]))
    assert buttress.get_request_id() is None
    assert structlog.contextvars.get_contextvars() == {}
    structlog.get_logger("app").info("after")
    assert "request_id" not in logs.events("after")[0]


async def test_request_id_even_when_app_crashes(logs: LogCapture) -> None:
    """Used alone, the layer logs a crashing request once as a 500 and re-raises."""

    async def crash(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("kaput")

    stack = RequestContextMiddleware(crash)
    with pytest.raises(RuntimeError):
        await call(stack, http_scope())
    assert [line["status"] for line in logs.access] == [500]
    assert logs.access[0]["level"] == "error"


async def test_websocket_gets_context_but_no_header_rewriting(logs: LogCapture) -> None:
    """Websocket scopes see the request id; their messages pass untouched and are not access-logged."""
    seen: dict[str, Any] = {}

    async def ws_app(scope: Any, receive: Any, send: Any) -> None:
        seen["id"] = buttress.get_request_id()
        await send({"type": "websocket.accept", "headers": [(b"x-app", b"1")]})

    stack = RequestContextMiddleware(ws_app)
    sent: list[Any] = []

    async def receive() -> Any:
        return {"type": "websocket.connect"}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = http_scope(type="websocket", headers=[(b"x-request-id", b"ws-1")])
    await stack(scope, receive, send)
    assert seen["id"] == "ws-1"
    assert sent == [{"type": "websocket.accept", "headers": [(b"x-app", b"1")]}]
    assert logs.access == []


async def test_lifespan_passes_through_untouched() -> None:
    """Lifespan scopes reach the app as they are, with nothing added."""
    received: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        received.append(dict(scope))

    stack = buttress.wrap(app, configure_logging=False)
    await stack({"type": "lifespan", "asgi": {"version": "3.0"}}, None, None)  # type: ignore[arg-type]
    assert received == [{"type": "lifespan", "asgi": {"version": "3.0"}}]


async def test_starlette_add_middleware(logs: LogCapture) -> None:
    """The middleware works through Starlette's add_middleware, with settings passed in."""
    from tests.apps import starlette_app

    app = starlette_app()
    app.add_middleware(RequestContextMiddleware, request_id_header="X-Trace")
    async with client_for(app) as client:
        response = await client.get("/log", headers={"X-Trace": "t-1"})
    assert response.headers["x-trace"] == "t-1"
    assert response.json() == {"request_id": "t-1"}


def test_structlog_keeps_one_context_variable_per_key() -> None:
    """The layer sets structlog's own context variables; structlog sees and clears them as its own."""
    from buttress.context import _BOUND_KEYS, _structlog_registry, _structlog_vars

    found = _structlog_vars()
    assert set(found) == set(_BOUND_KEYS)
    # The table a request is cleaned through holds exactly structlog's variables.
    registry = _structlog_registry()
    assert set(found.values()) <= set(registry.values())
    structlog.contextvars.bind_contextvars(probe_key="x")
    assert "structlog_probe_key" in registry
    structlog.contextvars.unbind_contextvars("probe_key")
    tokens = [var.set(f"v-{name}") for name, var in found.items()]
    try:
        bound = structlog.contextvars.get_contextvars()
        assert {k: bound[k] for k in _BOUND_KEYS} == {k: f"v-{k}" for k in _BOUND_KEYS}
        structlog.contextvars.clear_contextvars()
        assert not set(structlog.contextvars.get_contextvars()) & set(_BOUND_KEYS)
    finally:
        for (_, var), token in zip(found.items(), tokens, strict=True):
            var.reset(token)
