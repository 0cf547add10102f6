"""Property-based fuzzing of the whole wrap() stack, for every framework of the matrix.

Whatever the method, path, headers, query and body, the stack answers within the contract:
no exception escapes, every error body is JSON with "detail", every response carries a valid
request id, each request writes exactly one access-log line, every line is one JSON object,
and the metrics route label set stays bounded.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import buttress
from tests.apps import build
from tests.asgi_driver import call

METHODS = st.sampled_from(
    [
        "GET",
        "POST",
        "PUT",
        "DELETE",
        "PATCH",
        "HEAD",
        "OPTIONS",
        "TRACE",
        "PROPFIND",
        "G\x00T",
        "get",
    ]
)
KNOWN = st.sampled_from(
    ["/ok", "/items/42", "/log", "/boom", "/conflict", "/domain", "/stream", "/metrics", "/"]
)
SEGMENT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
PATHS = st.one_of(
    KNOWN,
    st.lists(SEGMENT, max_size=5).map(lambda parts: "/" + "/".join(parts)),
    st.text(max_size=40).map(lambda t: "/" + t.replace("\udc80", "")),
    st.just("/" + "a" * 5000),
    st.just("/items/%2e%2e/%00\n\r"),
)
RAW_EXTRA = st.binary(max_size=16)
HEADER_NAME = st.one_of(
    st.sampled_from(
        [
            b"x-request-id",
            b"traceparent",
            b"x-forwarded-for",
            b"forwarded",
            b"user-agent",
            b"accept",
            b"content-type",
            b"authorization",
            b"cookie",
            b"host",
        ]
    ),
    st.binary(min_size=1, max_size=20).map(lambda b: b.lower()),
)
HEADER_VALUE = st.one_of(
    st.binary(max_size=64),
    st.just(b"x" * 10000),
    st.just(b""),
    st.text(max_size=20).map(lambda t: t.encode("utf-8")),
)
HEADERS = st.lists(st.tuples(HEADER_NAME, HEADER_VALUE), max_size=8)
QUERY = st.binary(max_size=64)
BODY = st.binary(max_size=256)

REQUEST_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")


def _scope(
    method: str, path: str, raw_extra: bytes, headers: list[tuple[bytes, bytes]], query: bytes
) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("utf-8", "surrogatepass") + raw_extra,
        "root_path": "",
        "query_string": query,
        "headers": headers,
        "client": ("198.51.100.20", 5555),
        "server": ("127.0.0.1", 8000),
    }


@pytest.mark.parametrize(
    "framework", ["raw", "starlette", "fastapi", "litestar", "django", "quart"]
)
def test_stack_survives_arbitrary_requests(framework: str) -> None:
    """Arbitrary requests get a contract-shaped answer and exactly one valid log line each."""
    stream = io.StringIO()
    buttress.configure_logging(stream=stream)
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    stack = buttress.wrap(
        build(framework), configure_logging=False, registry=registry, rate_limit="1000000/second"
    )
    runner = asyncio.Runner()
    requests = 0

    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        derandomize=True,
    )
    @given(METHODS, PATHS, RAW_EXTRA, HEADERS, QUERY, BODY)
    def one(
        method: str,
        path: str,
        raw_extra: bytes,
        headers: list[tuple[bytes, bytes]],
        query: bytes,
        body: bytes,
    ) -> None:
        nonlocal requests
        before = len(stream.getvalue().splitlines())
        scope = _scope(method, path, raw_extra, headers, query)
        messages: list[dict[str, Any]] = []
        try:
            runner.run(call(stack, scope, body, sent=messages, stay_connected=True))
        except Exception as exc:
            # Only an abort of a response that had already started may escape.
            if not any(m["type"] == "http.response.start" for m in messages):
                raise AssertionError(f"exception escaped before the response: {exc!r}") from exc
            return
        requests += 1
        starts = [m for m in messages if m["type"] == "http.response.start"]
        assert len(starts) == 1, messages
        status = starts[0]["status"]
        response_headers = dict(starts[0]["headers"])
        assert REQUEST_ID.fullmatch(response_headers[b"x-request-id"])
        body_out = b"".join(
            m.get("body", b"") for m in messages if m["type"] == "http.response.body"
        )
        if status >= 400 and method != "HEAD" and path != "/metrics":
            payload = json.loads(body_out)
            assert "detail" in payload, body_out[:200]
            assert response_headers[b"content-type"].startswith(b"application/")
        lines = stream.getvalue().splitlines()[before:]
        parsed = [json.loads(line) for line in lines]  # every line is one JSON object
        access = [p for p in parsed if p.get("logger") == "buttress.access"]
        expected = 0 if path == "/metrics" else 1
        assert len(access) == expected, parsed
        if access:
            assert access[0]["status"] == status

    try:
        one()
    finally:
        runner.close()
        import logging

        for handler in list(logging.getLogger().handlers):
            if getattr(handler, "_buttress_handler", False):
                logging.getLogger().removeHandler(handler)
    routes = {
        sample.labels.get("route")
        for metric in registry.collect()
        for sample in metric.samples
        if "route" in sample.labels
    }
    # the matrix app has 7 templates; everything else collapses into <unmatched>/<other>
    assert len(routes) <= 10, routes
    assert requests > 0
