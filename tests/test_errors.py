"""The error contract: every error from every framework is JSON ``{"detail": ...}``."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

import buttress
from buttress.errors import ErrorMiddleware
from tests.apps import SpecificUserAlreadyExists, UserAlreadyExists, build
from tests.asgi_driver import http_scope
from tests.conftest import LogCapture, client_for

MAP = {UserAlreadyExists: 409}


def stack(app: Any, **overrides: Any) -> Any:
    """The whole buttress stack (metrics off: another layer's concern) around ``app``."""
    overrides.setdefault("exception_map", MAP)
    return buttress.wrap(app, configure_logging=False, metrics=False, **overrides)


def assert_contract(resp: httpx.Response, status: int, detail: Any, framework: str) -> None:
    """The row of the contract: status, JSON detail, request id, correct Content-Length."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/json"
    assert resp.headers["x-request-id"]
    assert int(resp.headers["content-length"]) == len(resp.content)
    body = resp.json()
    assert body["detail"] == detail
    if framework != "litestar":  # Litestar's own JSON errors carry detail (and status_code)
        assert body == {"detail": detail}


async def test_unknown_path_is_404_detail(app: Any, framework: str, logs: LogCapture) -> None:
    """An unknown path answers 404 {"detail": "Not Found"} in every framework."""
    async with client_for(stack(app)) as client:
        resp = await client.get("/nope")
    assert_contract(resp, 404, "Not Found", framework)


async def test_wrong_method_is_405_with_allow(app: Any, framework: str, logs: LogCapture) -> None:
    """A wrong method answers 405 {"detail": "Method Not Allowed"} and keeps Allow."""
    async with client_for(stack(app)) as client:
        resp = await client.post("/ok")
    assert_contract(resp, 405, "Method Not Allowed", framework)
    assert "GET" in resp.headers["allow"]


async def test_http_exception_409_keeps_detail_and_headers(
    app: Any, framework: str, logs: LogCapture
) -> None:
    """HTTPException(409, "User already exists") (or the framework's idiom) keeps its header."""
    async with client_for(stack(app)) as client:
        resp = await client.get("/conflict")
    assert_contract(resp, 409, "User already exists", framework)
    assert resp.headers["x-conflict"] == "yes"
    assert logs.events("unhandled exception") == []


async def test_mapped_domain_exception(app: Any, framework: str, logs: LogCapture) -> None:
    """A mapped exception answers its status and reason phrase, never its text; no traceback."""
    async with client_for(stack(app)) as client:
        resp = await client.get("/domain")
    assert_contract(resp, 409, "Conflict", framework)
    assert "User 7" not in resp.text  # str(exc) may carry SQL, parameters, host names
    assert logs.events("unhandled exception") == []


@pytest.mark.parametrize(
    ("rule", "detail"),
    [((409, "That user already exists"), "That user already exists"), ((409, str), "User 7 already exists")],
)
async def test_mapped_exception_detail_is_chosen_by_the_user(
    app: Any, framework: str, rule: Any, detail: str
) -> None:
    """A mapping may give a fixed detail, or a callable of the exception (str to opt in)."""
    async with client_for(stack(app, exception_map={UserAlreadyExists: rule})) as client:
        resp = await client.get("/domain")
    assert_contract(resp, 409, detail, framework)


async def test_unhandled_exception_is_500_logged_once(
    app: Any, framework: str, logs: LogCapture
) -> None:
    """An unhandled exception answers 500 with no exception text; one structured traceback log."""
    async with client_for(stack(app)) as client:
        resp = await client.get("/boom")
    assert_contract(resp, 500, "Internal server error", framework)
    assert "boom" not in resp.text and "RuntimeError" not in resp.text
    errors = logs.events("unhandled exception")
    assert len(errors) == 1
    event = errors[0]
    assert event["logger"] == "buttress.errors"
    assert event["level"] == "error"
    assert event["request_id"] == resp.headers["x-request-id"]
    assert event["exception"][0]["exc_type"] == "RuntimeError"
    assert "secret-token-123" not in logs.text  # no locals in JSON logs
    tracebacks = [line for line in logs.lines if "exception" in line]
    assert len(tracebacks) == 1


async def test_fastapi_422_passes_byte_for_byte(logs: LogCapture) -> None:
    """FastAPI's validation error body is unchanged, byte for byte."""
    bare = build("fastapi")
    async with client_for(bare) as client:
        expected = await client.get("/validate", params={"n": "x"})
    async with client_for(stack(build("fastapi"))) as client:
        resp = await client.get("/validate", params={"n": "x"})
    assert resp.status_code == 422
    assert resp.content == expected.content
    assert isinstance(resp.json()["detail"], list)
    assert resp.headers["content-type"] == "application/json"
    assert int(resp.headers["content-length"]) == len(resp.content)
    assert resp.headers["x-request-id"]


async def test_head_keeps_empty_body(app: Any, framework: str, logs: LogCapture) -> None:
    """A HEAD error gets the JSON headers and an empty body."""
    async with client_for(stack(app)) as client:
        resp = await client.head("/nope")
    assert resp.status_code == 404
    assert resp.content == b""
    assert resp.headers["content-type"] == "application/json"


async def test_success_responses_untouched(app: Any, framework: str, logs: LogCapture) -> None:
    """A 200 passes through unchanged."""
    async with client_for(stack(app)) as client:
        resp = await client.get("/items/42")
    assert resp.status_code == 200
    assert resp.json() == {"item_id": "42"}


async def test_problem_format(logs: LogCapture) -> None:
    """BUTTRESS_ERROR_FORMAT=problem answers RFC 9457 problem+json with detail."""
    async with client_for(stack(build("starlette"), error_format="problem")) as client:
        resp = await client.get("/nope")
        boom = await client.get("/boom")
    assert resp.status_code == 404
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.json() == {
        "type": "about:blank",
        "title": "Not Found",
        "status": 404,
        "detail": "Not Found",
        "instance": "/nope",
    }
    assert boom.json()["detail"] == "Internal server error"
    assert boom.json()["status"] == 500


async def test_exception_map_from_environment(
    monkeypatch: pytest.MonkeyPatch, logs: LogCapture
) -> None:
    """BUTTRESS_EXCEPTION_MAP maps an exception by import path."""
    monkeypatch.setenv("BUTTRESS_EXCEPTION_MAP", '{"tests.apps:UserAlreadyExists": 410}')
    app = buttress.wrap(build("starlette"), configure_logging=False, metrics=False)
    async with client_for(app) as client:
        resp = await client.get("/domain")
    assert resp.status_code == 410
    assert resp.json() == {"detail": "Gone"}
    monkeypatch.setenv(
        "BUTTRESS_EXCEPTION_MAP", '{"tests.apps:UserAlreadyExists": [409, "Already there"]}'
    )
    app = buttress.wrap(build("starlette"), configure_logging=False, metrics=False)
    async with client_for(app) as client:
        resp = await client.get("/domain")
    assert (resp.status_code, resp.json()) == (409, {"detail": "Already there"})


# --- raw ASGI apps for the edge cases ---------------------------------------------------


class Recorder:
    """A raw ASGI server side: records every message the stack sends, in order."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    async def send(self, message: Any) -> None:
        self.messages.append(dict(message))

    @property
    def starts(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == "http.response.start"]

    @property
    def bodies(self) -> list[bytes]:
        return [m.get("body", b"") for m in self.messages if m["type"] == "http.response.body"]


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def test_streamed_200_arrives_chunk_by_chunk(logs: LogCapture) -> None:
    """A streamed 200 is forwarded message by message, each chunk before the next is made."""
    recorder = Recorder()
    seen_before: list[int] = []

    async def app(scope: Any, rcv: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(3):
            seen_before.append(len(recorder.bodies))
            await send({"type": "http.response.body", "body": b"c%d" % i, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    await stack(app)(http_scope("/"), receive, recorder.send)
    assert seen_before == [0, 1, 2]  # chunk i was already forwarded when chunk i+1 was made
    assert recorder.bodies == [b"c0", b"c1", b"c2", b""]


async def test_framework_stream_arrives_in_chunks(
    app: Any, framework: str, logs: LogCapture
) -> None:
    """Every framework's streamed 200 reaches the server as separate body messages."""
    import asyncio

    recorder = Recorder()
    finished = asyncio.Event()
    requested = False

    async def send(message: Any) -> None:
        await recorder.send(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            finished.set()

    async def rcv() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await finished.wait()  # the client leaves only once the response is complete
        return {"type": "http.disconnect"}

    await stack(app)(http_scope("/stream"), rcv, send)
    chunks = [b for b in recorder.bodies if b]
    assert chunks == [b"chunk-0\n", b"chunk-1\n", b"chunk-2\n"]


async def test_exception_after_stream_started_reraised(logs: LogCapture) -> None:
    """An exception after the response started is logged and re-raised; no second start."""
    recorder = Recorder()

    async def app(scope: Any, rcv: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        raise RuntimeError("mid-stream")

    with pytest.raises(RuntimeError, match="mid-stream"):
        await stack(app)(http_scope("/"), receive, recorder.send)
    assert len(recorder.starts) == 1
    assert recorder.starts[0]["status"] == 200
    assert len(logs.events("unhandled exception after the response started")) == 1


async def test_huge_non_json_error_body_passes_unchanged(logs: LogCapture) -> None:
    """An error body over the limit is sent unchanged (streamed) and a warning logged."""
    recorder = Recorder()
    chunk = b"x" * 50_000

    async def app(scope: Any, rcv: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 502,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        for _ in range(3):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    await stack(app)(http_scope("/"), receive, recorder.send)
    assert recorder.starts[0]["status"] == 502
    assert b"".join(recorder.bodies) == chunk * 3
    assert len(recorder.starts) == 1
    warnings = logs.events("error response too large to normalize; sent unchanged")
    assert len(warnings) == 1


async def test_error_with_large_content_length_is_not_held(logs: LogCapture) -> None:
    """An error whose Content-Length exceeds the limit is forwarded at once, unchanged."""
    recorder = Recorder()
    body = b"y" * 100

    async def app(scope: Any, rcv: Any, send: Any) -> None:
        headers = [(b"content-type", b"text/plain"), (b"content-length", b"100")]
        await send({"type": "http.response.start", "status": 500, "headers": headers})
        assert len(recorder.starts) == 1  # already forwarded
        await send({"type": "http.response.body", "body": body})

    await ErrorMiddleware(app, body_limit=10)(http_scope("/"), receive, recorder.send)
    assert recorder.bodies == [body]


async def test_mapped_subclass(logs: LogCapture) -> None:
    """A subclass of a mapped exception answers the base class's status."""

    async def app(scope: Any, rcv: Any, send: Any) -> None:
        raise SpecificUserAlreadyExists("")

    async with client_for(stack(app)) as client:
        resp = await client.get("/")
    assert resp.status_code == 409
    assert resp.json() == {"detail": "Conflict"}  # empty message: the reason phrase


@pytest.mark.parametrize(
    ("content_type", "body", "detail"),
    [
        (b"text/plain", b"Teapot trouble", "Teapot trouble"),
        (b"text/html", b"<html><h1>Nope</h1></html>", "Bad Request"),
        (None, b"", "Bad Request"),
        (b"application/json", b'{"error": "bad"}', {"error": "bad"}),
        (b"application/json", b'["a"]', ["a"]),
        (b"application/json", b"not json", "Bad Request"),
    ],
)
async def test_inner_error_bodies_normalized(
    content_type: bytes | None, body: bytes, detail: Any, logs: LogCapture
) -> None:
    """Plain text is kept as detail; HTML/empty give the reason; JSON without detail is wrapped."""

    async def app(scope: Any, rcv: Any, send: Any) -> None:
        headers = [
            (b"set-cookie", b"a=1"),
            (b"www-authenticate", b"Bearer"),
            (b"retry-after", b"5"),
        ]
        if content_type is not None:
            headers.append((b"content-type", content_type))
        await send({"type": "http.response.start", "status": 400, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async with client_for(stack(app)) as client:
        resp = await client.get("/")
    assert_contract(resp, 400, detail, "raw")
    assert resp.headers["set-cookie"] == "a=1"
    assert resp.headers["www-authenticate"] == "Bearer"
    assert resp.headers["retry-after"] == "5"


async def test_starlette_500_page_replaced_once(logs: LogCapture) -> None:
    """Starlette's own 500 page (sent, then re-raised) never reaches the client."""
    recorder = Recorder()
    await stack(build("starlette"))(http_scope("/boom"), receive, recorder.send)
    assert len(recorder.starts) == 1
    assert recorder.starts[0]["status"] == 500
    assert json.loads(b"".join(recorder.bodies)) == {"detail": "Internal server error"}


def test_exception_map_rejects_bad_status() -> None:
    """A mapped status outside 400-599 is refused when the middleware is built."""

    async def app(scope: Any, rcv: Any, send: Any) -> None:
        raise AssertionError

    with pytest.raises(ValueError, match="400 to 599"):
        ErrorMiddleware(app, exception_map={UserAlreadyExists: 200})
