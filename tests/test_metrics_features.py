"""What starlette-exporter and instrumentator users ask for: skips, extra labels, status on histograms, sizes, exemplars."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics

import buttress
from buttress.config import ConfigError
from tests.apps import build
from tests.conftest import client_for

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
OPENMETRICS = {"Accept": "application/openmetrics-text; version=1.0.0"}


def stack(framework: str, **overrides: Any) -> tuple[Any, CollectorRegistry]:
    registry = CollectorRegistry()
    if framework == "raw":
        groups = {"^/items/[^/]+$": "/items/{item_id}"}
        groups.update({f"^{p}$": p for p in ("/ok", "/log", "/conflict")})
        overrides.setdefault("metrics_path_groups", groups)
    app = buttress.wrap(
        build(framework), configure_logging=False, access_log=False, registry=registry, **overrides
    )
    return app, registry


def counted(registry: CollectorRegistry, **labels: str) -> float:
    total = 0.0
    for metric in registry.collect():
        if metric.name == "http_requests":
            for sample in metric.samples:
                if sample.name.endswith("_total") and labels.items() <= sample.labels.items():
                    total += sample.value
    return total


async def test_skipped_paths_and_methods_are_not_counted(framework: str) -> None:
    """BUTTRESS_METRICS_SKIP_PATHS (patterns too) and _SKIP_METHODS leave no series."""
    app, registry = stack(
        framework, metrics_skip_paths="/ok,/items/{item_id}", metrics_skip_methods="HEAD"
    )
    async with client_for(app) as client:
        await client.get("/ok")
        await client.get("/items/3")
        await client.head("/log")
        await client.get("/log")
    assert counted(registry, route="/ok") == 0
    assert counted(registry, route="/items/{item_id}") == 0
    assert counted(registry, method="HEAD") == 0
    assert counted(registry, route="/log") == 1


async def test_extra_labels_come_from_headers_and_stay_bounded(framework: str) -> None:
    """A request-header label adds its value; past 50 distinct values new ones are <other>."""
    app, registry = stack(framework, metrics_extra_labels={"tenant": "request:X-Tenant"})
    async with client_for(app) as client:
        await client.get("/ok", headers={"X-Tenant": "acme"})
        await client.get("/ok")
        for i in range(60):
            await client.get("/ok", headers={"X-Tenant": f"t{i}"})
    assert counted(registry, route="/ok", tenant="acme") == 1
    assert counted(registry, route="/ok", tenant="") == 1
    assert counted(registry, route="/ok", tenant="<other>") == 12  # 50 values, "" and acme


async def test_extra_label_from_a_response_header_and_a_callable() -> None:
    """Labels may come from what the app answered, or from a callable of (scope, record)."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"x-cache", b"hit" if scope["path"] == "/a" else b"miss")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    registry = CollectorRegistry()
    wrapped = buttress.wrap(
        app,
        configure_logging=False,
        registry=registry,
        metrics_path_groups={"^/[ab]$": "/x"},
        metrics_extra_labels={"cache": "response:X-Cache", "ua": lambda scope, record: "bot"},
    )
    async with client_for(wrapped) as client:
        await client.get("/a")
        await client.get("/b")
    assert counted(registry, cache="hit", ua="bot") == 1
    assert counted(registry, cache="miss", ua="bot") == 1


def test_bad_extra_labels_are_refused() -> None:
    """Reserved names and unknown sources stop start-up naming the variable."""
    with pytest.raises(ConfigError, match="BUTTRESS_METRICS_EXTRA_LABELS"):
        buttress.Settings.from_env({"BUTTRESS_METRICS_EXTRA_LABELS": '{"route": "request:X-A"}'})
    with pytest.raises(ConfigError, match="request:<Header>"):
        buttress.Settings.from_env({"BUTTRESS_METRICS_EXTRA_LABELS": '{"t": "cookie:x"}'})


async def test_status_on_the_duration_histogram(framework: str) -> None:
    """BUTTRESS_METRICS_DURATION_STATUS=true labels latency by status too."""
    app, registry = stack(framework, metrics_duration_status=True)
    async with client_for(app) as client:
        await client.get("/ok")
        await client.get("/conflict")
    count = registry.get_sample_value(
        "http_request_duration_seconds_count",
        {"method": "GET", "route": "/conflict", "status": "409"},
    )
    assert count == 1


async def test_request_body_size_is_observed() -> None:
    """BUTTRESS_METRICS_REQUEST_SIZE=true observes the request body bytes the app read."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    registry = CollectorRegistry()
    wrapped = buttress.wrap(
        app,
        configure_logging=False,
        registry=registry,
        metrics_path_groups={"^/up$": "/up"},
        metrics_request_size=True,
    )
    async with client_for(wrapped) as client:
        await client.post("/up", content=b"x" * 1234)
    labels = {"method": "POST", "route": "/up"}
    assert registry.get_sample_value("http_request_size_bytes_sum", labels) == 1234
    assert registry.get_sample_value("http_request_size_bytes_count", labels) == 1


async def test_the_counter_carries_the_exemplar_too(framework: str) -> None:
    """Scraped as OpenMetrics, http_requests_total carries the trace-id exemplar as the histogram does."""
    app, _ = stack(framework)
    traceparent = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
    async with client_for(app) as client:
        await client.get("/items/7", headers={"traceparent": traceparent})
        text = (await client.get("/metrics", headers=OPENMETRICS)).text
    exemplars = [
        sample.exemplar.labels
        for family in openmetrics(text)
        if family.name == "http_requests"
        for sample in family.samples
        if sample.exemplar is not None
    ]
    assert exemplars == [{"trace_id": TRACE_ID}]


async def test_the_exemplar_can_come_from_a_callable() -> None:
    """MetricsMiddleware(exemplar=...) chooses the exemplar labels (or none)."""
    from buttress import MetricsMiddleware, RequestContextMiddleware

    registry = CollectorRegistry()
    inner = MetricsMiddleware(
        build("starlette"),
        registry=registry,
        exemplar=lambda record: {"request_id": record.request_id},
    )
    app = RequestContextMiddleware(inner, access_log=False)
    async with client_for(app) as client:
        response = await client.get("/ok")
        text = (await client.get("/metrics", headers=OPENMETRICS)).text
    assert f'request_id="{response.headers["x-request-id"]}"' in text
