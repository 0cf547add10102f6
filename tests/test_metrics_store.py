"""The lock-free metrics store exposes exactly what prometheus-client's own metrics would."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

import buttress.metrics
from buttress import RequestContextMiddleware
from buttress.metrics import MetricsMiddleware
from tests.asgi_driver import call, http_scope

TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class Clock:
    """``time.perf_counter`` and ``time.time`` under the app's control."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _app(clock: Clock, plan: dict[str, tuple[int, int, float]]) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()  # the request body, for http_request_size_bytes
        status, size, seconds = plan[scope["path"]]
        await send({"type": "http.response.start", "status": status, "headers": []})
        clock.now += seconds
        await send({"type": "http.response.body", "body": b"x" * size})

    return app


SHAPED = {
    "extra_labels": {"tenant": "request:X-Tenant"},
    "duration_status": True,
    "request_size": True,
}


def _stack(
    fast: bool, clock: Clock, plan: Any, monkeypatch: pytest.MonkeyPatch, **options: Any
) -> Any:
    registry = CollectorRegistry()
    # The store is chosen when prometheus-client keeps values in process; the other branch
    # (for PROMETHEUS_MULTIPROC_DIR) uses prometheus-client's own Counter and Histogram.
    monkeypatch.setattr(buttress.metrics, "multiprocess_enabled", lambda: not fast)
    layer = MetricsMiddleware(_app(clock, plan), registry=registry, path="", **options)
    assert (layer._fast is True) == fast
    return RequestContextMiddleware(layer, access_log=False), registry


def _normalized(text: str) -> str:
    # Creation times and exemplar timestamps are wall-clock facts of each run.
    text = re.sub(r"(_created\{[^}]*\}) \S+", r"\1 T", text)
    return re.sub(r"(# \{trace_id=\"[0-9a-f]+\"\} \S+) \S+", r"\1 T", text)


requests = st.lists(
    st.tuples(
        st.sampled_from(["GET", "POST", "HEAD", "BREW"]),
        st.sampled_from(["/a", "/b", "/c"]),
        st.booleans(),
    ),
    min_size=1,
    max_size=25,
)
plans = st.fixed_dictionaries(
    {
        path: st.tuples(
            st.sampled_from([200, 201, 404, 429, 500, 503]),
            st.sampled_from([0, 99, 100, 101, 5000, 2_000_000]),
            st.sampled_from([0.0, 0.004, 0.005, 0.0051, 0.25, 3.0, 12.0]),
        )
        for path in ("/a", "/b", "/c")
    }
)


@pytest.mark.parametrize("options", [{}, SHAPED], ids=["default", "extra-labels-status-sizes"])
def test_store_exposition_equals_prometheus_client(options: dict[str, Any]) -> None:
    """For the same requests, the store's scrape equals prometheus-client's, in both formats."""

    @settings(max_examples=30, deadline=None)
    @given(plan=plans, sent=requests)
    def check(plan: Any, sent: Any) -> None:
        _compare(plan, sent, options)

    check()


def _compare(plan: Any, sent: Any, options: dict[str, Any]) -> None:
    with pytest.MonkeyPatch.context() as patch:
        outputs = []
        for fast in (True, False):
            clock = Clock()
            patch.setattr("time.perf_counter", clock)
            app, registry = _stack(fast, clock, plan, patch, **options)
            for i, (method, path, traced) in enumerate(sent):
                headers = [(b"traceparent", TRACE.encode())] if traced else []
                headers.append((b"x-tenant", f"t{i % 3}".encode()))
                scope = http_scope(path=path, method=method, headers=headers)
                _run(call(app, scope, body=b"b" * (i * 40)))
            outputs.append(
                (
                    _normalized(generate_latest(registry).decode()),
                    _normalized(generate_openmetrics(registry).decode()),
                )
            )
    assert outputs[0][0] == outputs[1][0]
    assert outputs[0][1] == outputs[1][1]


def test_created_series_follow_prometheus_clients_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    """disable_created_metrics() hides _created from the store too (a private flag, checked here)."""
    import prometheus_client
    from prometheus_client import metrics

    assert isinstance(metrics._use_created, bool)  # the private flag the store reads
    clock = Clock()
    monkeypatch.setattr("time.perf_counter", clock)
    app, registry = _stack(True, clock, {"/a": (200, 1, 0.1)}, monkeypatch)
    _run(call(app, http_scope(path="/a")))
    assert "_created" in generate_latest(registry).decode()
    prometheus_client.disable_created_metrics()
    try:
        assert "_created" not in generate_latest(registry).decode()
    finally:
        prometheus_client.enable_created_metrics()


def _run(coro: Any) -> Any:
    import asyncio

    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()
