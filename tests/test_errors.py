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
    [
        ((409, "That user already exists"), "That user already exists"),
        ((409, str), "User 7 already exists"),
    ],
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


# --- secrets in logs ----------------------------------------------------------------------------


def _echoing_app() -> Any:
    """A Starlette app whose error message carries the caller's bearer token and API key."""
    from starlette.applications import Starlette
    from starlette.routing import Route

    async def leak(request: Any) -> None:
        auth = request.headers["authorization"]
        key = request.query_params["api_key"]
        try:
            raise ValueError(f"upstream rejected {key}")
        except ValueError as exc:
            raise RuntimeError(f"login failed for {auth!r}") from exc

    return Starlette(routes=[Route("/leak", leak)])


async def test_request_secrets_never_reach_a_log_line(logs: LogCapture) -> None:
    """A traceback whose messages quote the bearer token or API key logs them as [Filtered]."""
    async with client_for(stack(_echoing_app())) as client:
        resp = await client.get(
            "/leak?api_key=qs-KEY-98765", headers={"Authorization": "Bearer tok-SECRET-12345"}
        )
    assert resp.status_code == 500
    # The server's lines (the test client's own httpx line prints the URL it requested).
    served = "\n".join(json.dumps(x) for x in logs.lines if x.get("logger") != "httpx")
    assert "tok-SECRET-12345" not in served
    assert "qs-KEY-98765" not in served
    [line] = logs.events("unhandled exception")
    values = {e["exc_type"]: e["exc_value"] for e in line["exception"]}
    assert values["RuntimeError"] == "login failed for '[Filtered]'"
    assert values["ValueError"] == "upstream rejected [Filtered]"


# --- Django with DEBUG=True ---------------------------------------------------------------------


def django_debug() -> Any:
    """A real project's settings for one test: DEBUG, and CommonMiddleware (Content-Length)."""
    from django.test import override_settings

    build("django")  # the shared settings first; overridden until the block ends
    middleware = ["buttress.adapters.DjangoMiddleware", "django.middleware.common.CommonMiddleware"]
    return override_settings(DEBUG=True, MIDDLEWARE=middleware)


async def test_django_debug_page_never_reaches_the_client(logs: LogCapture) -> None:
    """Django DEBUG=True: the 500 is the contract, its traceback logged once, not the debug page."""
    with django_debug():
        # The debug page (57 KB here, 123 KB in a real project) is larger than the limit.
        app = stack(build("django"), error_body_limit=16384)
        async with client_for(app) as client:
            resp = await client.get("/boom")
    assert_contract(resp, 500, "Internal server error", "django")
    [line] = logs.events("unhandled exception")
    assert line["exception"][-1]["exc_type"] == "RuntimeError"
    assert logs.events("error response too large to normalize; sent unchanged") == []


async def test_django_debug_error_reported_to_sentry(
    sentry_ingest: Any, logs: LogCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Django DEBUG=True: the exception still reaches Sentry once."""
    import sentry_sdk

    monkeypatch.setenv("SENTRY_DSN", sentry_ingest.dsn)
    with django_debug():
        app = stack(build("django"), error_body_limit=16384)
        async with client_for(app) as client:
            await client.get("/boom")
    sentry_sdk.flush(timeout=10)
    [event] = sentry_ingest.events
    assert event["exception"]["values"][-1]["type"] == "RuntimeError"


# --- when the error layer's own answer would fail -----------------------------------------------


def _bad_http_exception_app(framework: str) -> Any:
    """/object raises HTTPException(418) with an object as detail; /header a non-latin-1 header."""
    if framework == "litestar":
        from litestar import Litestar, get
        from litestar.exceptions import HTTPException as LitestarHTTPException

        @get("/object")
        async def lobject() -> None:
            raise LitestarHTTPException(status_code=418, detail=object())  # type: ignore[arg-type]

        @get("/header")
        async def lheader() -> None:
            raise LitestarHTTPException(status_code=409, detail="Taken", headers={"X-Who": "Zoë ☃"})

        return Litestar(route_handlers=[lobject, lheader], logging_config=None)
    from starlette.exceptions import HTTPException

    async def raise_object() -> None:
        raise HTTPException(418, detail=object())  # type: ignore[arg-type]

    async def raise_header() -> None:
        raise HTTPException(409, detail="Taken", headers={"X-Who": "Zoë ☃"})

    if framework == "fastapi":
        from fastapi import FastAPI

        api = FastAPI()
        api.get("/object")(raise_object)
        api.get("/header")(raise_header)
        return api
    if framework == "starlette":
        from starlette.applications import Starlette
        from starlette.routing import Route

        async def s_object(request: Any) -> None:
            await raise_object()

        async def s_header(request: Any) -> None:
            await raise_header()

        return Starlette(routes=[Route("/object", s_object), Route("/header", s_header)])

    async def raw(scope: Any, receive: Any, send: Any) -> None:
        await (raise_object() if scope["path"] == "/object" else raise_header())

    return raw


@pytest.mark.parametrize("framework", ["raw", "starlette", "fastapi", "litestar"])
async def test_unserialisable_http_exception_still_answers_the_contract(
    framework: str, logs: LogCapture
) -> None:
    """An HTTPException with an object detail or a non-latin-1 header still answers JSON."""
    async with client_for(stack(_bad_http_exception_app(framework))) as client:
        obj = await client.get("/object")
        header = await client.get("/header")
    for resp in (obj, header):
        assert resp.headers["content-type"] == "application/json"
        assert isinstance(resp.json()["detail"], str)
        assert int(resp.headers["content-length"]) == len(resp.content)
    if framework != "litestar":  # Litestar fails in its own handler and answers 500 itself
        assert (obj.status_code, obj.json()) == (418, {"detail": "I'm a Teapot"})
        assert (header.status_code, header.json()) == (409, {"detail": "Taken"})
        assert "x-who" not in header.headers


# --- escape hatches -----------------------------------------------------------------------------


async def test_errors_false_keeps_the_frameworks_own_pages(logs: LogCapture) -> None:
    """BUTTRESS_ERRORS=false: no error layer, so a Django HTML 404 page stays HTML."""
    async with client_for(stack(build("django"), errors=False)) as client:
        resp = await client.get("/nope")
    assert resp.status_code == 404
    assert resp.headers["content-type"].startswith("text/html")
    assert resp.headers["x-request-id"]


def _own_contract_app() -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        body = json.dumps({"errors": [{"code": "bad_input"}]}).encode()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 400, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


async def test_json_error_bodies_pass_through_when_asked(logs: LogCapture) -> None:
    """BUTTRESS_ERROR_PASSTHROUGH_JSON=true keeps an API's own JSON errors byte for byte."""
    async with client_for(stack(_own_contract_app())) as client:
        wrapped = await client.get("/")
    assert wrapped.json() == {"detail": {"errors": [{"code": "bad_input"}]}}  # the default
    async with client_for(stack(_own_contract_app(), error_passthrough_json=True)) as client:
        resp = await client.get("/")
    assert resp.status_code == 400
    assert resp.json() == {"errors": [{"code": "bad_input"}]}
    assert int(resp.headers["content-length"]) == len(resp.content)
