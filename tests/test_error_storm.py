"""Error storms: a failing dependency costs a bounded number of Sentry events and log lines."""

from __future__ import annotations

from typing import Any

import pytest
import sentry_sdk
from prometheus_client import CollectorRegistry

import buttress
from buttress._budget import ReportBudget
from buttress.errors import ErrorMiddleware
from tests.apps import build
from tests.conftest import LogCapture, client_for
from tests.sentry_ingest import SentryIngest

BUDGET = 3
STORM = 25


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def error_layer(app: Any) -> ErrorMiddleware:
    """The ErrorMiddleware inside a wrap() stack."""
    while not isinstance(app, ErrorMiddleware):
        app = app.app
    return app


def dropped(registry: CollectorRegistry) -> float:
    value = registry.get_sample_value("sentry_reports_dropped_total", {"reason": "budget"})
    return value or 0.0


async def test_storm_costs_at_most_the_budget(
    framework: str, sentry_ingest: SentryIngest, logs: LogCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """N failing requests: the budget's worth of events and tracebacks, the rest counted."""
    monkeypatch.setenv("SENTRY_DSN", sentry_ingest.dsn)
    registry = CollectorRegistry()
    app = buttress.wrap(
        build(framework),
        configure_logging=False,
        metrics=False,
        registry=registry,
        error_report_budget=BUDGET,
    )
    clock = FakeClock()
    budget = error_layer(app)._gate.budget
    assert budget is not None
    budget.clock = clock
    async with client_for(app) as client:
        for _ in range(STORM):
            assert (await client.get("/boom")).status_code == 500
        # Another error (another exception type) is a new fingerprint: reported at once.
        assert (await client.get("/domain")).status_code == 500
        clock.now += 60.0  # a minute later the budget has refilled
        assert (await client.get("/boom")).status_code == 500
    sentry_sdk.flush(timeout=10)
    events = sentry_ingest.events
    types = [e["exception"]["values"][-1]["type"] for e in events]
    assert types == ["RuntimeError"] * BUDGET + ["UserAlreadyExists", "RuntimeError"]
    assert dropped(registry) == STORM - BUDGET
    tracebacks = logs.events("unhandled exception")
    assert len(tracebacks) == BUDGET + 2
    # The first report after the storm says how many it stands for, in the log and in Sentry.
    assert tracebacks[-1]["suppressed"] == STORM - BUDGET
    late = [e for e in events if e["extra"].get("suppressed_since_last_report")]
    assert [e["extra"]["suppressed_since_last_report"] for e in late] == [STORM - BUDGET]
    assert len(logs.access) == STORM + 2  # every request is still access-logged


async def test_budget_zero_reports_every_error(
    sentry_ingest: SentryIngest, logs: LogCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BUTTRESS_ERROR_REPORT_BUDGET=0 turns the budget off: every error is reported."""
    monkeypatch.setenv("SENTRY_DSN", sentry_ingest.dsn)
    monkeypatch.setenv("BUTTRESS_ERROR_REPORT_BUDGET", "0")
    app = buttress.wrap(build("starlette"), configure_logging=False, metrics=False)
    async with client_for(app) as client:
        for _ in range(15):
            await client.get("/boom")
    sentry_sdk.flush(timeout=10)
    assert len(sentry_ingest.events) == 15
    assert len(logs.events("unhandled exception")) == 15


def test_budget_is_a_token_bucket_per_fingerprint() -> None:
    """A burst per fingerprint, then one report per 60/N seconds; the table stays bounded."""
    clock = FakeClock()
    budget = ReportBudget(2, max_keys=3, clock=clock)
    assert [budget.take("a") for _ in range(4)] == [0, 0, None, None]
    assert budget.take("b") == 0  # a new fingerprint is never held back
    clock.now += 30.0  # one token back (2 per minute)
    assert [budget.take("a"), budget.take("a")] == [2, None]
    for key in ("c", "d", "e"):
        budget.take(key)
    assert len(budget._buckets) == 3
