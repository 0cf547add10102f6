"""The access line users of the peers ask for: chosen fields, masked queries, 4xx level, durations that end with the response."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

import buttress
from tests.apps import build
from tests.conftest import LogCapture, client_for


async def test_fields_can_be_chosen_and_the_query_is_masked(
    framework: str, logs: LogCapture
) -> None:
    """BUTTRESS_ACCESS_LOG_FIELDS adds the query (credentials masked), HTTP version and referer."""
    app = buttress.wrap(
        build(framework),
        configure_logging=False,
        access_log_fields="route,status,query,http_version,referer",
    )
    async with client_for(app) as client:
        await client.get(
            "/items/9?page=2&api_key=sk-live-123456&token=t0k3n-abcdef",
            headers={"Referer": "https://shop.example/cart"},
        )
    (line,) = logs.access
    # a raw ASGI app exposes no template
    route = "<unmatched>" if framework == "raw" else "/items/{item_id}"
    assert line["route"] == route and line["status"] == 200
    assert line["query"].startswith("page=2&api_key=")
    assert "sk-live-123456" not in line["query"] and "t0k3n-abcdef" not in line["query"]
    assert line["http_version"] == "1.1"
    assert line["referer"] == "https://shop.example/cart"
    assert "user_agent" not in line and "duration_ms" not in line


def test_unknown_fields_are_refused() -> None:
    """A field buttress does not write stops start-up, listing the ones it does."""
    with pytest.raises(buttress.ConfigError, match="BUTTRESS_ACCESS_LOG_FIELDS='route,cookies'"):
        buttress.Settings.from_env({"BUTTRESS_ACCESS_LOG_FIELDS": "route,cookies"})


@pytest.mark.parametrize(("setting", "level"), [("warning", "warning"), ("info", "info")])
async def test_the_level_of_4xx_lines_is_a_setting(
    setting: str, level: str, framework: str, logs: LogCapture
) -> None:
    """BUTTRESS_ACCESS_LOG_4XX_LEVEL=info keeps client errors out of warning dashboards."""
    app = buttress.wrap(build(framework), configure_logging=False, access_log_4xx_level=setting)
    async with client_for(app) as client:
        await client.get("/nothing-here")
        await client.get("/boom")
    assert [line["level"] for line in logs.access] == [level, "error"]


async def test_unmatched_is_one_word_in_logs_and_metrics(framework: str, logs: LogCapture) -> None:
    """A 404's route is <unmatched> in the access line, as in http_requests_total."""
    app = buttress.wrap(build(framework), configure_logging=False)
    async with client_for(app) as client:
        await client.get("/nothing-here")
        scrape = (await client.get("/metrics")).text
    assert logs.access[0]["route"] == "<unmatched>"
    assert 'route="<unmatched>"' in scrape


async def test_duration_ends_with_the_last_body_byte(
    logs: LogCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A background task after the response is not part of the request's duration."""
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    clock = {"now": 1000.0}
    monkeypatch.setattr(time, "perf_counter", lambda: clock["now"])

    def slow_cleanup() -> None:
        clock["now"] += 300.0  # five minutes of work after the client has its answer

    async def handler(request: Any) -> PlainTextResponse:
        clock["now"] += 0.25
        return PlainTextResponse("ok", background=BackgroundTask(slow_cleanup))

    registry = __import__("prometheus_client").CollectorRegistry()
    app = buttress.wrap(
        Starlette(routes=[Route("/report", handler)]), configure_logging=False, registry=registry
    )
    async with client_for(app) as client:
        await client.get("/report")
    assert logs.access[0]["duration_ms"] == 250.0
    labels = {"method": "GET", "route": "/report"}
    assert registry.get_sample_value("http_request_duration_seconds_sum", labels) == 0.25


async def test_metrics_scrapes_under_a_root_path_are_not_logged(logs: LogCapture) -> None:
    """Under --root-path the scrape exclusion still sees /metrics (the path the app sees)."""
    app = buttress.wrap(build("starlette"), configure_logging=False)
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 1), root_path="/api")
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/api/metrics")).status_code == 200
        await client.get("/api/ok")
    assert [line["route"] for line in logs.access] == ["/ok"]
