"""buttress.retry: counts and waits on a fake clock, deadline, re-raise, logs, metrics, presets."""

from __future__ import annotations

import subprocess
import sys
import traceback
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

import buttress
from buttress.retry import transient
from tests.apps import build
from tests.conftest import ROOT, client_for


class FakeClock:
    """A monotonic clock that only moves when something sleeps (or a test advances it)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Flaky:
    """Raises ``exc`` for the first ``failures`` calls, then returns ``value``."""

    def __init__(self, failures: int, exc: BaseException | None = None, value: Any = "ok") -> None:
        self.failures = failures
        self.exc = exc or ConnectionError("connection refused")
        self.value = value
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.exc
        return self.value


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def policy(clock: FakeClock, registry: CollectorRegistry, **kwargs: Any) -> Any:
    kwargs.setdefault("sleep", clock.sleep)
    return transient(clock=clock, registry=registry, **kwargs)


def count(registry: CollectorRegistry, function: str, outcome: str) -> float:
    value = registry.get_sample_value("retries_total", {"function": function, "outcome": outcome})
    return value or 0.0


# --- counts and waits -------------------------------------------------------------------


def test_sync_call_recovers_after_retries(clock: FakeClock, registry: CollectorRegistry) -> None:
    """A sync function failing twice is called three times and returns its value."""
    flaky = Flaky(2)
    fetch = policy(clock, registry, attempts=3, wait_min=0.5, wait_max=4)(flaky)
    assert fetch() == "ok"
    assert flaky.calls == 3
    assert len(clock.sleeps) == 2


def test_waits_grow_exponentially_with_jitter_between_min_and_max(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    """The first wait is wait_min; wait n lies in [wait_min, min(wait_max, wait_min * 2**(n-1))]."""
    fetch = policy(clock, registry, attempts=8, wait_min=0.5, wait_max=4)(Flaky(100))
    with pytest.raises(ConnectionError):
        fetch()
    assert len(clock.sleeps) == 7
    assert clock.sleeps[0] == 0.5
    for n, wait in enumerate(clock.sleeps, start=1):
        assert 0.5 <= wait <= min(4.0, 0.5 * 2 ** (n - 1))


def test_zero_wait_min_retries_immediately(clock: FakeClock, registry: CollectorRegistry) -> None:
    """wait_min=0 means retries do not wait at all."""
    fetch = policy(clock, registry, attempts=3, wait_min=0, wait_max=0)(Flaky(2))
    assert fetch() == "ok"
    assert clock.sleeps == [0, 0]


def test_exhausted_reraises_the_original_exception(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    """After the last attempt the very exception the function raised propagates, not RetryError."""
    original = TimeoutError("upstream timed out")
    flaky = Flaky(10, original)

    def load_profile() -> str:
        return str(flaky())

    fetch = policy(clock, registry, attempts=4)(load_profile)
    with pytest.raises(TimeoutError) as info:
        fetch()
    assert info.value is original
    assert flaky.calls == 4
    assert len(clock.sleeps) == 3
    frames = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
    assert "load_profile" in frames


def test_other_exceptions_are_not_retried(clock: FakeClock, registry: CollectorRegistry) -> None:
    """An exception outside ``on`` propagates from the first attempt."""
    flaky = Flaky(5, ValueError("bad input"))
    fetch = policy(clock, registry)(flaky)
    with pytest.raises(ValueError, match="bad input"):
        fetch()
    assert flaky.calls == 1
    assert clock.sleeps == []


def test_on_accepts_a_predicate(clock: FakeClock, registry: CollectorRegistry) -> None:
    """``on=`` may be a predicate of the exception."""

    class HTTPError(Exception):
        def __init__(self, status: int) -> None:
            super().__init__(f"status {status}")
            self.status = status

    flaky = Flaky(2, HTTPError(503))
    fetch = policy(clock, registry, on=lambda exc: getattr(exc, "status", 0) == 503)(flaky)
    assert fetch() == "ok"
    assert flaky.calls == 3

    not_retried = Flaky(2, HTTPError(404))
    with pytest.raises(HTTPError):
        policy(clock, registry, on=lambda exc: getattr(exc, "status", 0) == 503)(not_retried)()
    assert not_retried.calls == 1


class Response:
    def __init__(self, status: int) -> None:
        self.status = status


def test_result_predicate_retries_then_returns_the_good_result(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    """A result the predicate rejects (a 503 response) is retried until a good one comes."""
    answers = iter([Response(503), Response(503), Response(200)])
    fetch = policy(clock, registry, result=lambda r: r.status == 503)(lambda: next(answers))
    assert fetch().status == 200
    assert len(clock.sleeps) == 2


def test_result_predicate_exhausted_returns_the_last_result(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    """When every result is rejected, the last one is returned (not an exception)."""
    seen: list[Response] = []

    def call() -> Response:
        seen.append(Response(503))
        return seen[-1]

    fetch = policy(clock, registry, attempts=3, result=lambda r: r.status == 503)(call)
    assert fetch() is seen[-1]
    assert len(seen) == 3
    assert count(registry, f"{__name__}.{call.__qualname__}", "exhausted") == 1


def test_deadline_stops_when_the_next_wait_would_pass_it(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    """With 1 s waits and a 2.5 s deadline, the third failure is the last attempt."""
    flaky = Flaky(100)
    fetch = policy(clock, registry, attempts=10, wait_min=1, wait_max=1, deadline=2.5)(flaky)
    with pytest.raises(ConnectionError):
        fetch()
    assert flaky.calls == 3
    assert clock.sleeps == [1, 1]
    assert clock.now == 2


def test_deadline_counts_the_time_spent_in_attempts(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    """Slow attempts use up the deadline too: time is measured on the clock, not by waits."""
    calls = 0

    def slow() -> None:
        nonlocal calls
        calls += 1
        clock.now += 2.0  # each attempt takes 2 s before failing
        raise ConnectionError("reset")

    fetch = policy(clock, registry, attempts=10, wait_min=1, wait_max=1, deadline=5)(slow)
    with pytest.raises(ConnectionError):
        fetch()
    # t=2 fail, wait to 3; t=5 fail, next wait would end at 6 > 5: stop.
    assert calls == 2


def test_deadline_starts_at_each_call(clock: FakeClock, registry: CollectorRegistry) -> None:
    """The deadline is per call, not per decoration."""
    flaky = Flaky(1)
    fetch = policy(clock, registry, wait_min=1, wait_max=1, deadline=1.5)(flaky)
    clock.now = 1000.0
    assert fetch() == "ok"
    assert flaky.calls == 2


def test_defaults_follow_wrap_even_for_policies_made_before(
    monkeypatch: pytest.MonkeyPatch, clock: FakeClock, registry: CollectorRegistry
) -> None:
    """BUTTRESS_RETRY_* reach every policy through wrap(), also one decorated at import time."""
    before = transient()
    assert (before.attempts_max, before.wait_min, before.wait_max) == (3, 0.5, 4.0)
    monkeypatch.setenv("BUTTRESS_RETRY_ATTEMPTS", "5")
    monkeypatch.setenv("BUTTRESS_RETRY_WAIT_MIN", "0.25")
    monkeypatch.setenv("BUTTRESS_RETRY_WAIT_MAX", "2")
    assert before.attempts_max == 3  # transient() itself never reads the environment
    buttress.wrap(build("raw"), configure_logging=False)
    assert (before.attempts_max, before.wait_min, before.wait_max) == (5, 0.25, 2.0)
    flaky = Flaky(100)
    with pytest.raises(ConnectionError):
        policy(clock, registry)(flaky)()
    assert flaky.calls == 5
    assert clock.sleeps[0] == 0.25


def test_invalid_arguments_say_what_is_accepted() -> None:
    """Impossible policies fail at decoration time with a message naming the value."""
    with pytest.raises(ValueError, match="attempts=0"):
        transient(attempts=0)
    with pytest.raises(ValueError, match="wait_min=5"):
        transient(wait_min=5, wait_max=1)
    with pytest.raises(ValueError, match="deadline=0"):
        transient(deadline=0)
    with pytest.raises(TypeError, match="on='oops'"):
        transient(on="oops")  # type: ignore[arg-type]


def test_decorated_function_keeps_name_and_works_as_a_method(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    """The wrapper keeps the function's name and binds as a method."""

    class Client:
        def __init__(self) -> None:
            self.flaky = Flaky(1)

        @policy(clock, registry)
        def get(self, key: str) -> str:
            return f"{key}={self.flaky()}"

    assert Client.get.__name__ == "get"
    assert Client().get("a") == "a=ok"


# --- async ------------------------------------------------------------------------------


async def test_async_call_recovers_with_a_sync_fake_sleep(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    """An async function is retried; an injected sync sleep is used as the wait."""
    flaky = Flaky(2)

    @policy(clock, registry, attempts=3, wait_min=0.5, wait_max=4)
    async def fetch(x: int) -> str:
        return f"{x}:{flaky()}"

    assert await fetch(1) == "1:ok"
    assert flaky.calls == 3
    assert clock.sleeps[0] == 0.5
    assert len(clock.sleeps) == 2


async def test_async_exhausted_reraises_with_an_async_sleep(registry: CollectorRegistry) -> None:
    """An async sleep is awaited; the original exception propagates after the last attempt."""
    waited: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        waited.append(seconds)

    original = ConnectionResetError("reset by peer")

    @transient(attempts=3, sleep=fake_sleep, registry=registry)
    async def fetch() -> None:
        raise original

    with pytest.raises(ConnectionResetError) as info:
        await fetch()
    assert info.value is original
    assert len(waited) == 2


async def test_concurrent_async_calls_keep_separate_attempt_counts(
    registry: CollectorRegistry,
) -> None:
    """Two concurrent calls of one decorated coroutine each get their own attempts."""
    import asyncio

    calls: dict[str, int] = {"a": 0, "b": 0}

    async def tick(seconds: float) -> None:
        await asyncio.sleep(0)

    @transient(attempts=3, sleep=tick, registry=registry)
    async def fetch(key: str) -> str:
        calls[key] += 1
        await asyncio.sleep(0)
        if calls[key] < 3:
            raise ConnectionError(key)
        return key

    assert await asyncio.gather(fetch("a"), fetch("b")) == ["a", "b"]
    assert calls == {"a": 3, "b": 3}


# --- iterator style ---------------------------------------------------------------------


def test_attempts_block_style(clock: FakeClock, registry: CollectorRegistry) -> None:
    """``for attempt in policy.attempts(name)`` retries the block and counts under ``name``."""
    flaky = Flaky(2)
    value = None
    for attempt in policy(clock, registry).attempts("load_config"):
        with attempt:
            value = flaky()
    assert value == "ok"
    assert flaky.calls == 3
    assert count(registry, "load_config", "retried") == 2
    assert count(registry, "load_config", "recovered") == 1


def test_attempts_block_style_reraises_when_exhausted(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    """The block style re-raises the original exception after the last attempt."""
    original = ConnectionError("down")

    def load() -> None:
        for attempt in policy(clock, registry, attempts=2).attempts("load_config"):
            with attempt:
                raise original

    with pytest.raises(ConnectionError) as info:
        load()
    assert info.value is original
    assert count(registry, "load_config", "exhausted") == 1


async def test_async_attempts_block_style(clock: FakeClock, registry: CollectorRegistry) -> None:
    """``async for attempt in policy.async_attempts(name)`` retries the block."""
    flaky = Flaky(1)
    value = None
    async for attempt in policy(clock, registry).async_attempts("warm_cache"):
        with attempt:
            value = flaky()
    assert value == "ok"
    assert clock.sleeps == [0.5]
    assert count(registry, "warm_cache", "recovered") == 1


# --- metrics ----------------------------------------------------------------------------


def test_retries_total_counts_retried_recovered_and_exhausted(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    """retries_total{function,outcome}: one per retry, one per recovery, one per give-up."""

    def fetch_user() -> str:
        return str(flaky())

    name = f"{__name__}.{fetch_user.__qualname__}"
    wrapped = policy(clock, registry, attempts=3)(fetch_user)
    flaky = Flaky(1)
    assert wrapped() == "ok"
    flaky = Flaky(10)
    with pytest.raises(ConnectionError):
        wrapped()
    flaky = Flaky(0)
    assert wrapped() == "ok"  # a first-try success counts nothing
    assert count(registry, name, "retried") == 1 + 2
    assert count(registry, name, "recovered") == 1
    assert count(registry, name, "exhausted") == 1


def test_counter_is_registered_once_per_registry(registry: CollectorRegistry) -> None:
    """Many decorated functions share one retries_total in a registry, registered lazily."""
    a = transient(attempts=2, sleep=lambda s: None, registry=registry)(Flaky(1))
    b = transient(attempts=2, sleep=lambda s: None, registry=registry)(Flaky(1))
    assert registry.get_sample_value("retries_total", {"function": "x", "outcome": "y"}) is None
    assert list(registry.collect()) == []  # nothing registered before the first retry
    a()
    b()
    families = [m for m in registry.collect() if m.name == "retries"]
    assert len(families) == 1


def test_metrics_namespace_prefixes_the_counter(registry: CollectorRegistry) -> None:
    """BUTTRESS_METRICS_NAMESPACE prefixes retries_total like the HTTP metrics."""
    buttress.wrap(build("raw"), configure_logging=False, metrics_namespace="shop")

    def once() -> str:
        return str(flaky())

    flaky = Flaky(1)
    transient(sleep=lambda s: None, registry=registry)(once)()
    labels = {"function": f"{__name__}.{once.__qualname__}", "outcome": "recovered"}
    assert registry.get_sample_value("shop_retries_total", labels) == 1


# --- logs -------------------------------------------------------------------------------


def test_each_retry_is_a_warning_with_function_attempt_wait_and_error(
    logs: Any, clock: FakeClock, registry: CollectorRegistry
) -> None:
    """Every retry writes a ``retrying`` warning naming the function, attempt, wait and error."""

    def charge_card() -> str:
        return str(flaky())

    flaky = Flaky(2, ConnectionError("connection refused"))
    policy(clock, registry, attempts=3, wait_min=0.5, wait_max=4)(charge_card)()
    retrying = logs.events("retrying")
    assert [e["attempt"] for e in retrying] == [1, 2]
    first = retrying[0]
    assert first["level"] == "warning"
    assert first["logger"] == "buttress.retry"
    assert first["function"] == f"{__name__}.{charge_card.__qualname__}"
    assert first["wait"] == 0.5
    assert first["error_type"] == "ConnectionError"
    assert first["error_message"] == "connection refused"
    assert [e["attempts"] for e in logs.events("retry_recovered")] == [3]


def test_no_sentry_breadcrumb_noise_when_sentry_is_off(
    logs: Any, clock: FakeClock, registry: CollectorRegistry
) -> None:
    """With Sentry off, retries log only their own events (no "Dropped breadcrumb" lines)."""
    policy(clock, registry)(Flaky(1))()
    assert {line["event"] for line in logs.lines} == {"retrying", "retry_recovered"}


def _service(fetch: Any) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def profile(request: Request) -> JSONResponse:
        return JSONResponse({"profile": await fetch()})

    return Starlette(routes=[Route("/profile", profile)])


async def test_retry_logs_carry_the_request_id(
    logs: Any, clock: FakeClock, registry: CollectorRegistry
) -> None:
    """A retry inside a request logs the request id the response carries."""
    flaky = Flaky(1)

    @policy(clock, registry)
    async def fetch() -> str:
        return str(flaky())

    app = buttress.wrap(_service(fetch), configure_logging=False, metrics=False)
    async with client_for(app) as client:
        response = await client.get("/profile", headers={"X-Request-ID": "req-retry-1"})
    assert response.status_code == 200
    assert response.json() == {"profile": "ok"}
    assert response.headers["x-request-id"] == "req-retry-1"
    (retrying,) = logs.events("retrying")
    assert retrying["request_id"] == "req-retry-1"


async def test_exhausted_retries_reach_the_500_contract(
    logs: Any, clock: FakeClock, registry: CollectorRegistry
) -> None:
    """When retries run out inside a request, the client gets the JSON 500 and the id."""
    flaky = Flaky(100, ConnectionError("database unreachable"))

    @policy(clock, registry, attempts=3)
    async def fetch() -> str:
        return str(flaky())

    app = buttress.wrap(_service(fetch), configure_logging=False, metrics=False)
    async with client_for(app, headers={"X-Request-ID": "req-retry-2"}) as client:
        response = await client.get("/profile")
    assert response.status_code == 500
    assert response.json() == {"detail": "Internal server error"}
    assert response.headers["x-request-id"] == "req-retry-2"
    assert flaky.calls == 3
    (exhausted,) = logs.events("retries_exhausted")
    assert exhausted["request_id"] == "req-retry-2"
    assert exhausted["error_type"] == "ConnectionError"
    (access,) = logs.access
    assert access["status"] == 500


# --- presets ----------------------------------------------------------------------------


@pytest.mark.slow
def test_presets_do_not_import_their_libraries_until_used() -> None:
    """Importing buttress.retry imports neither sqlalchemy nor httpx."""
    code = (
        "import sys, buttress.retry as r\n"
        "from buttress.retry import httpx, sqlalchemy\n"
        "assert 'sqlalchemy' not in sys.modules and 'httpx' not in sys.modules, sys.modules\n"
        "r.sqlalchemy(attempts=2)\n"
        "assert 'sqlalchemy' in sys.modules\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr


def test_sqlalchemy_preset_retries_operational_errors(clock: FakeClock) -> None:
    """buttress.retry.sqlalchemy retries a lost connection of a real SQLAlchemy engine."""
    import sqlalchemy as sa
    from sqlalchemy.exc import OperationalError

    from buttress.retry import sqlalchemy as retry_db

    engine = sa.create_engine("sqlite://")
    tries = 0

    @retry_db(sleep=clock.sleep, registry=CollectorRegistry())
    def query() -> int:
        nonlocal tries
        tries += 1
        with engine.connect() as conn:
            table = "missing_until_second_try" if tries == 1 else "sqlite_master"
            # sqlite reports a missing table as an OperationalError, like a dropped link.
            return len(conn.execute(sa.text(f"select * from {table}")).fetchall())

    assert query() == 0
    assert tries == 2

    @retry_db(attempts=2, sleep=clock.sleep, registry=CollectorRegistry())
    def broken() -> None:
        with engine.connect() as conn:
            conn.execute(sa.text("select * from nowhere"))

    with pytest.raises(OperationalError):
        broken()


async def test_httpx_preset_retries_gateway_errors_and_transport_failures(
    clock: FakeClock,
) -> None:
    """buttress.retry.httpx retries 503 responses and connect errors, then returns the 200."""
    from buttress.retry import httpx as retry_http

    answers = iter(["connect-error", 503, 502, 200])

    def handler(request: httpx.Request) -> httpx.Response:
        answer = next(answers)
        if answer == "connect-error":
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(int(answer), json={"status": answer})

    registry = CollectorRegistry()
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:

        @retry_http(attempts=5, sleep=clock.sleep, registry=registry)
        async def get() -> httpx.Response:
            return await client.get("http://upstream.test/items")

        response = await get()
    assert response.status_code == 200
    assert len(clock.sleeps) == 3


async def test_httpx_preset_returns_the_last_gateway_error_when_exhausted(
    clock: FakeClock,
) -> None:
    """When the upstream keeps answering 503, the last 503 response is returned."""
    from buttress.retry import httpx as retry_http

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:

        @retry_http(attempts=3, sleep=clock.sleep, registry=CollectorRegistry())
        async def get() -> httpx.Response:
            return await client.get("http://upstream.test/items")

        response = await get()
    assert response.status_code == 503
    assert len(clock.sleeps) == 2


def test_presets_decorate_bare(clock: FakeClock) -> None:
    """``@sqlalchemy`` without parentheses decorates with the default policy."""
    from sqlalchemy.exc import DisconnectionError

    from buttress.retry import sqlalchemy as retry_db

    flaky = Flaky(1, DisconnectionError("gone"))
    wrapped = retry_db(flaky)
    # Bare use reads the environment defaults; only the wait differs from the fake clock.
    assert wrapped.__wrapped__ is flaky  # type: ignore[attr-defined]


# --- Sentry -----------------------------------------------------------------------------


class _Captured:
    """The events a real sentry-sdk client hands to its transport."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []


@pytest.fixture
def sentry_events() -> Any:
    """A real sentry-sdk client whose transport keeps events in memory (no network)."""
    import sentry_sdk
    from sentry_sdk.transport import Transport

    captured = _Captured()

    class MemoryTransport(Transport):
        def capture_envelope(self, envelope: Any) -> None:
            for item in envelope.items:
                if item.type == "event":
                    captured.events.append(item.payload.json)

    client = sentry_sdk.Client(
        dsn="http://public@127.0.0.1:9/1",
        transport=MemoryTransport,
        default_integrations=False,
        auto_enabling_integrations=False,
    )
    sentry_sdk.get_global_scope().set_client(client)
    try:
        yield captured
    finally:
        client.close()
        sentry_sdk.get_global_scope().set_client(None)


def test_each_failed_attempt_is_a_sentry_breadcrumb_on_the_event(
    sentry_events: _Captured, clock: FakeClock, registry: CollectorRegistry
) -> None:
    """The event of an exhausted retry carries one ``retry`` breadcrumb per attempt."""
    import sentry_sdk

    flaky = Flaky(10, ConnectionError("refused"))
    fetch = policy(clock, registry, attempts=3, name="inventory.fetch")(flaky)
    with sentry_sdk.isolation_scope():
        try:
            fetch()
        except ConnectionError as exc:
            sentry_sdk.capture_exception(exc)
    (event,) = sentry_events.events
    crumbs = [c for c in event["breadcrumbs"]["values"] if c["category"] == "retry"]
    assert [c["data"]["attempt"] for c in crumbs] == [1, 2, 3]
    assert [c["level"] for c in crumbs] == ["warning", "warning", "error"]
    assert all(c["data"]["function"] == "inventory.fetch" for c in crumbs)
    assert crumbs[0]["data"]["error_type"] == "ConnectionError"
    assert event["exception"]["values"][-1]["type"] == "ConnectionError"


async def test_exhausted_retry_in_a_request_reaches_sentry_with_only_its_attempts(
    monkeypatch: pytest.MonkeyPatch, logs: Any, clock: FakeClock, registry: CollectorRegistry
) -> None:
    """The 500's Sentry event (over HTTP) has the original error and this request's attempts."""
    import sentry_sdk

    from tests.sentry_ingest import sentry_ingest

    dependency = [Flaky(1)]  # the first request recovers after one retry

    @policy(clock, registry, attempts=3, name="inventory.fetch")
    async def fetch() -> str:
        return str(dependency[0]())

    with sentry_ingest() as ingest:
        monkeypatch.setenv("SENTRY_DSN", ingest.dsn)
        try:
            app = buttress.wrap(_service(fetch), configure_logging=False, metrics=False)
            async with client_for(app) as client:
                ok = await client.get("/profile", headers={"X-Request-ID": "req-ok"})
                dependency[0] = Flaky(100, ConnectionError("database unreachable"))
                failed = await client.get("/profile", headers={"X-Request-ID": "req-fail"})
            sentry_sdk.flush()
            (event,) = ingest.wait_for_events(1)
        finally:
            sentry_sdk.get_client().close()
            sentry_sdk.get_global_scope().set_client(None)
    assert ok.status_code == 200
    assert failed.status_code == 500
    assert failed.json() == {"detail": "Internal server error"}
    assert event["exception"]["values"][-1]["type"] == "ConnectionError"
    assert event["exception"]["values"][-1]["value"] == "database unreachable"
    assert event["tags"]["request_id"] == "req-fail"
    crumbs = [c for c in event["breadcrumbs"]["values"] if c.get("category") == "retry"]
    # Only the failing request's three attempts: none of the first request's leak in.
    assert [(c["data"]["attempt"], c["level"]) for c in crumbs] == [
        (1, "warning"),
        (2, "warning"),
        (3, "error"),
    ]


def test_logged_error_message_is_its_first_line_only(
    logs: Any, clock: FakeClock, registry: CollectorRegistry
) -> None:
    """Statement and parameters that drivers append after the first line are not logged."""
    import sqlalchemy as sa

    from buttress.retry import sqlalchemy as retry_db

    engine = sa.create_engine("sqlite://")

    @retry_db(attempts=2, sleep=clock.sleep, registry=registry)
    def lookup() -> None:
        with engine.connect() as conn:
            conn.execute(sa.text("select * from users where email = :e"), {"e": "ann@example.com"})

    with pytest.raises(sa.exc.OperationalError):
        lookup()
    (retrying,) = logs.events("retrying")
    assert retrying["error_type"] == "OperationalError"
    assert "no such table: users" in retrying["error_message"]
    assert "ann@example.com" not in logs.text


async def test_retries_appear_on_the_stack_metrics_endpoint_by_default(clock: FakeClock) -> None:
    """With no registry passed anywhere, retries_total is served by wrap()'s /metrics."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    calls = 0

    @transient(attempts=3, wait_min=0.01, sleep=clock.sleep, name="tests.default_registry_probe")
    def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 2:
            raise ConnectionError("first call fails")
        return "ok"

    async def endpoint(request: Any) -> JSONResponse:
        return JSONResponse({"value": flaky()})

    stack = buttress.wrap(Starlette(routes=[Route("/", endpoint)]), configure_logging=False)
    async with client_for(stack) as client:
        assert (await client.get("/")).json() == {"value": "ok"}
        text = (await client.get("/metrics")).text
    assert 'retries_total{function="tests.default_registry_probe",outcome="retried"} 1.0' in text
    assert 'retries_total{function="tests.default_registry_probe",outcome="recovered"} 1.0' in text
