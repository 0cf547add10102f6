"""Rate limiting: exact counts, Retry-After, routes, keys, proxies, Redis, outages, memory."""

from __future__ import annotations

import math
import os
import time
import uuid
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

import buttress
from buttress import Settings
from buttress.ratelimit import RateLimitMiddleware, warn_if_memory_with_workers
from buttress.stack import rate_limit_options
from tests.apps import build
from tests.conftest import LogCapture, client_for, start_server, stop

STRATEGIES = ("fixed-window", "moving-window", "sliding-window-counter")


class FakeClock:
    """``time.time`` under test control (limits' memory storage and strategies read it)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """A fake wall clock just after the start of a minute (and of an hour)."""
    fake = FakeClock(1_800_000_000.25)  # a quarter second into a minute (and an hour)
    monkeypatch.setattr(time, "time", fake)
    return fake


def limits_reference(strategy: str) -> Any:
    """limits' own strategy over its own MemoryStorage (its timer thread off): the reference."""
    from limits.storage import MemoryStorage
    from limits.strategies import STRATEGIES as LIMITS_STRATEGIES

    class QuietMemoryStorage(MemoryStorage):
        STORAGE_SCHEME = None  # type: ignore[assignment]  # not a registered scheme

        def __init__(self) -> None:
            super().__init__()
            self.timer.cancel()

        def _MemoryStorage__schedule_expiry(self) -> None:
            """No timer thread: expired entries only cost memory here."""

    return LIMITS_STRATEGIES[strategy](QuietMemoryStorage())


def limiter(app: Any, **options: Any) -> RateLimitMiddleware:
    options.setdefault("registry", CollectorRegistry())
    return RateLimitMiddleware(app, **options)


def redis_options(redis_server: Any) -> dict[str, Any]:
    """A Redis storage with a key prefix of its own (an external Redis may be shared)."""
    return {
        "storage": redis_server.url,
        "storage_options": {"key_prefix": f"test-{uuid.uuid4().hex}"},
    }


async def statuses(client: httpx.AsyncClient, path: str, n: int, **kwargs: Any) -> list[int]:
    return [(await client.get(path, **kwargs)).status_code for _ in range(n)]


# --- exact counts ---------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_memory_allows_exactly_the_limit(strategy: str, clock: FakeClock) -> None:
    """With memory storage each strategy lets exactly N requests of a window through."""
    mw = limiter(build("raw"), default="5/minute", strategy=strategy)
    async with client_for(mw) as client:
        assert await statuses(client, "/ok", 8) == [200] * 5 + [429] * 3


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_redis_allows_exactly_the_limit(strategy: str, redis_server: Any) -> None:
    """With Redis each strategy lets exactly N requests of a window through."""
    mw = limiter(build("raw"), default="5/hour", strategy=strategy, **redis_options(redis_server))
    try:
        async with client_for(mw) as client:
            assert await statuses(client, "/ok", 8) == [200] * 5 + [429] * 3
    finally:
        await mw.aclose()


async def test_several_limits_all_apply(clock: FakeClock) -> None:
    """``2/second;3/minute``: the per-second limit bites first, then the per-minute one."""
    mw = limiter(build("raw"), default="2/second;3/minute", strategy="fixed-window")
    async with client_for(mw) as client:
        assert await statuses(client, "/ok", 3) == [200, 200, 429]
        clock.advance(1.5)
        responses = [await client.get("/ok") for _ in range(2)]
    assert [r.status_code for r in responses] == [200, 429]
    assert responses[1].json() == {
        "detail": "Rate limit exceeded: 3 per 1 minute. Please slow down."
    }


# --- the 429 and Retry-After ------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_retry_after_is_the_true_reset_memory(strategy: str, clock: FakeClock) -> None:
    """Retry-After is within a second of when the key may pass again, never a constant."""
    mw = limiter(build("raw"), default="3/minute", strategy=strategy)
    async with client_for(mw) as client:
        assert await statuses(client, "/ok", 3) == [200] * 3
        clock.advance(20.3)
        rejected = await client.get("/ok")
    assert rejected.status_code == 429
    # limits' own strategy over its own MemoryStorage, fed the same hits, says when it resets.
    reference = limits_reference(strategy)
    item = mw.rules[0].limits[0].item
    clock.advance(-20.3)
    for _ in range(3):
        reference.hit(item, "*", "203.0.113.7")
    clock.advance(20.3)
    assert not reference.hit(item, "*", "203.0.113.7")
    true_reset = reference.get_window_stats(item, "*", "203.0.113.7").reset_time - clock.now
    retry_after = int(rejected.headers["retry-after"])
    assert 0 <= retry_after - true_reset < 1
    assert retry_after >= 1
    assert rejected.headers["ratelimit-reset"] == rejected.headers["retry-after"]
    if strategy != "sliding-window-counter":  # the window opens 60 s after the first hit
        assert retry_after == math.ceil(60 - 20.3)
    clock.advance(retry_after)
    async with client_for(mw) as client:
        assert (await client.get("/ok")).status_code == 200


async def test_retry_after_is_the_true_reset_redis(redis_server: Any) -> None:
    """With Redis, Retry-After matches the window stats the storage reports."""
    mw = limiter(
        build("raw"), default="2/hour", strategy="fixed-window", **redis_options(redis_server)
    )
    try:
        async with client_for(mw) as client:
            assert await statuses(client, "/ok", 3) == [200, 200, 429]
            rejected = await client.get("/ok")
        stats = await mw.decider.limiter.aio.get_window_stats(
            mw.rules[0].limits[0].item, "*", "203.0.113.7"
        )
        true_reset = stats.reset_time - time.time()
        assert abs(int(rejected.headers["retry-after"]) - true_reset) <= 1
        assert 3500 < int(rejected.headers["retry-after"]) <= 3600
    finally:
        await mw.aclose()


async def test_429_body_headers_and_allowed_headers(clock: FakeClock) -> None:
    """The 429 is JSON with detail and RateLimit-*; allowed responses carry RateLimit-* too."""
    mw = limiter(build("starlette"), default="2/minute", strategy="fixed-window")
    async with client_for(mw) as client:
        first = await client.get("/ok")
        await client.get("/ok")
        rejected = await client.get("/ok")
    assert first.status_code == 200
    assert first.headers["ratelimit-limit"] == "2"
    assert first.headers["ratelimit-remaining"] == "1"
    assert first.headers["ratelimit-reset"] == "60"
    assert rejected.status_code == 429
    assert rejected.headers["content-type"] == "application/json"
    assert rejected.json() == {"detail": "Rate limit exceeded: 2 per 1 minute. Please slow down."}
    assert rejected.headers["ratelimit-remaining"] == "0"
    assert rejected.headers["ratelimit-limit"] == "2"


async def test_headers_off_leaves_allowed_responses_alone(clock: FakeClock) -> None:
    """With headers disabled, allowed responses get no RateLimit-* headers; the 429 still does."""
    mw = limiter(build("raw"), default="1/minute", headers=False)
    async with client_for(mw) as client:
        allowed = await client.get("/ok")
        rejected = await client.get("/ok")
    assert "ratelimit-limit" not in allowed.headers
    assert rejected.headers["ratelimit-limit"] == "1"


async def test_429_keeps_the_contract_when_wrapped(logs: LogCapture, clock: FakeClock) -> None:
    """Wrapped, the 429 carries the request id and appears in the access log with status 429."""
    stack = buttress.wrap(
        build("fastapi"), configure_logging=False, rate_limit="1/minute", metrics=False
    )
    async with client_for(stack) as client:
        assert (await client.get("/ok")).status_code == 200
        rejected = await client.get("/ok", headers={"X-Request-ID": "abc-123"})
    assert rejected.status_code == 429
    assert rejected.headers["x-request-id"] == "abc-123"
    assert rejected.json()["detail"].startswith("Rate limit exceeded: 1 per 1 minute")
    assert [line["status"] for line in logs.access] == [200, 429]


async def test_rejections_are_counted_and_logged_throttled(
    logs: LogCapture, clock: FakeClock
) -> None:
    """Every rejection is counted by route pattern; the warning is aggregated, not per request."""
    registry = CollectorRegistry()
    mw = limiter(build("raw"), limits={"/items/{item_id}": "1/minute"}, registry=registry)
    mw.rules[0].throttle._clock = clock  # the throttle's interval on the fake clock
    async with client_for(mw) as client:
        assert await statuses(client, "/items/1", 6) == [200] + [429] * 5
    value = registry.get_sample_value("ratelimit_rejections_total", {"route": "/items/{item_id}"})
    assert value == 5
    warnings = logs.events("rate_limit_exceeded")
    assert len(warnings) == 1
    assert warnings[0]["route"] == "/items/{item_id}"
    assert warnings[0]["limit"] == "1 per 1 minute"
    assert warnings[0]["level"] == "warning"
    clock.advance(11)  # past the throttle interval: the next line reports what it held back
    async with client_for(mw) as client:
        await client.get("/items/1")
    assert logs.events("rate_limit_exceeded")[-1]["suppressed"] == 4


# --- routes -----------------------------------------------------------------------------


async def test_route_patterns_across_frameworks(framework: str, clock: FakeClock) -> None:
    """Route patterns are matched by the middleware itself, the same in every framework."""
    mw = limiter(
        build(framework),
        default="4/minute",
        limits={"/items/{item_id}": "2/minute", "POST /ok": "1/minute"},
    )
    async with client_for(mw) as client:
        assert await statuses(client, "/items/1", 2) == [200, 200]
        # One bucket per pattern and client: another item id shares it.
        assert (await client.get("/items/2")).status_code == 429
        # The route's own limit is not also charged to the default.
        assert await statuses(client, "/ok", 4) == [200] * 4
        assert (await client.get("/ok")).status_code == 429
        assert (await client.post("/ok")).status_code == 405  # POST /ok has its own budget
        assert (await client.post("/ok")).status_code == 429
        # {name} is one segment: a deeper path falls to the (exhausted) default.
        assert (await client.get("/items/1/x")).status_code == 429


async def test_charge_default_also_charges_the_default(clock: FakeClock) -> None:
    """With ``charge_default=True`` a route's requests also use up the default limit."""
    mw = limiter(
        build("raw"), default="3/minute", limits={"/items/{id}": "5/minute"}, charge_default=True
    )
    async with client_for(mw) as client:
        assert await statuses(client, "/items/1", 3) == [200] * 3
        assert (await client.get("/items/1")).status_code == 429
        assert (await client.get("/ok")).status_code == 429


async def test_exempt_paths_and_allow_list(clock: FakeClock) -> None:
    """Exempt paths and allowed IPs/CIDRs/keys are never limited."""
    mw = limiter(build("raw"), default="1/minute", exempt=["/ok"])
    async with client_for(mw) as client:
        assert await statuses(client, "/ok", 3) == [200] * 3
    mw = limiter(build("raw"), default="1/minute", allow=["203.0.113.0/24"])
    async with client_for(mw) as client:
        assert await statuses(client, "/ok", 3) == [200] * 3
    mw = limiter(build("raw"), default="1/minute", key="header:X-API-Key", allow=["internal"])
    async with client_for(mw) as client:
        assert await statuses(client, "/ok", 3, headers={"X-API-Key": "internal"}) == [200] * 3
        assert await statuses(client, "/ok", 2, headers={"X-API-Key": "other"}) == [200, 429]


async def test_metrics_path_is_exempt_by_default(clock: FakeClock) -> None:
    """BUTTRESS_RATE_LIMIT_EXEMPT defaults to the metrics path."""
    mw = limiter(build("raw"), default="1/minute")
    async with client_for(mw) as client:
        assert await statuses(client, "/metrics", 3) == [404] * 3


# --- keys and proxies -------------------------------------------------------------------


async def test_header_key_and_fallback_to_ip(clock: FakeClock) -> None:
    """header:<Name> keys each value apart; without the header the client IP is the key."""
    mw = limiter(build("raw"), default="2/minute", key="header:X-API-Key")
    async with client_for(mw) as client:
        a = {"X-API-Key": "alpha"}
        assert await statuses(client, "/ok", 3, headers=a) == [200, 200, 429]
        assert await statuses(client, "/ok", 2, headers={"X-API-Key": "beta"}) == [200, 200]
        assert await statuses(client, "/ok", 3) == [200, 200, 429]  # falls back to the IP
        # A header equal to an IP never spends (or uses) that IP's budget.
        spoof = {"X-API-Key": "198.51.100.1"}
        assert await statuses(client, "/ok", 2, headers=spoof) == [200, 200]


async def test_callable_keys_sync_and_async(clock: FakeClock) -> None:
    """A sync or async callable of the scope is the key; None falls back to the IP."""

    def tenant(scope: Any) -> str | None:
        return scope["query_string"].decode() or None

    async def atenant(scope: Any) -> str | None:
        return tenant(scope)

    for key in (tenant, atenant):
        mw = limiter(build("raw"), default="1/minute", key=key)
        async with client_for(mw) as client:
            assert await statuses(client, "/ok?t=1", 2) == [200, 429]
            assert (await client.get("/ok?t=2")).status_code == 200
            assert await statuses(client, "/ok", 2) == [200, 429]


async def test_untrusted_peer_cannot_spoof_the_key(clock: FakeClock) -> None:
    """A spoofed X-Forwarded-For from an untrusted peer never changes the key."""
    mw = RateLimitMiddleware(
        build("raw"), trusted_proxies="127.0.0.1", default="2/minute", registry=CollectorRegistry()
    )
    async with client_for(mw) as client:
        codes = [
            (await client.get("/ok", headers={"X-Forwarded-For": f"10.0.0.{i}"})).status_code
            for i in range(4)
        ]
    assert codes == [200, 200, 429, 429]


@pytest.mark.parametrize("wrapped", [False, True])
async def test_trusted_proxy_forwards_the_client(
    wrapped: bool, logs: LogCapture, clock: FakeClock
) -> None:
    """Behind a trusted proxy, each forwarded client has its own budget (alone or wrapped)."""
    settings = Settings.from_env(
        {}, trusted_proxies="203.0.113.7", rate_limit="1/minute", metrics=False
    )
    app: Any
    if wrapped:
        app = buttress.wrap(build("starlette"), settings, configure_logging=False)
    else:
        app = RateLimitMiddleware(
            build("starlette"), registry=CollectorRegistry(), **rate_limit_options(settings)
        )
    async with client_for(app) as client:
        one = {"X-Forwarded-For": "198.51.100.1"}
        two = {"X-Forwarded-For": "198.51.100.2"}
        assert await statuses(client, "/ok", 2, headers=one) == [200, 429]
        assert await statuses(client, "/ok", 2, headers=two) == [200, 429]


# --- storage outage ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("fail_open", [True, False])
async def test_redis_outage_and_recovery(
    fail_open: bool, redis_server: Any, logs: LogCapture
) -> None:
    """Redis down: pass (fail-open) or 503 (fail-closed), counted, warned once; back: limits."""
    registry = CollectorRegistry()
    mw = limiter(
        build("raw"),
        default="2/hour",
        fail_open=fail_open,
        registry=registry,
        **redis_options(redis_server),
    )
    try:
        async with client_for(mw) as client:
            assert await statuses(client, "/ok", 3) == [200, 200, 429]
            redis_server.stop()
            down = [await client.get("/ok") for _ in range(3)]
            if fail_open:
                assert [r.status_code for r in down] == [200] * 3
            else:
                assert [r.status_code for r in down] == [503] * 3
                assert down[0].json() == {"detail": "Rate limiter unavailable"}
            assert registry.get_sample_value("ratelimit_storage_errors_total") == 3
            assert len(logs.events("rate_limit_storage_unavailable")) == 1
            redis_server.start()  # same port, empty data
            assert await statuses(client, "/ok", 3) == [200, 200, 429]
    finally:
        await mw.aclose()


# --- several instances ------------------------------------------------------------------


@pytest.mark.slow
def test_two_instances_share_one_limit_through_redis(redis_server: Any) -> None:
    """Two uvicorn processes on one Redis enforce one global limit: exactly 10 of 30 pass."""
    env = {
        "BUTTRESS_RATE_LIMIT": "10/minute",
        "BUTTRESS_RATE_LIMIT_STORAGE": redis_server.url,
        "BUTTRESS_RATE_LIMIT_STRATEGY": "moving-window",
        "BUTTRESS_RATE_LIMIT_KEY": "header:X-Client",
    }
    args = [
        "-m",
        "uvicorn",
        "tests.ratelimit_served:app",
        "--port",
        "{port}",
        "--log-level",
        "warning",
    ]
    first, port1 = start_server(args, env)
    try:
        second, port2 = start_server(args, env)
        try:
            client_key = {"X-Client": uuid.uuid4().hex}
            codes = []
            with httpx.Client(timeout=10) as client:
                for i in range(30):
                    port = port1 if i % 2 == 0 else port2
                    codes.append(
                        client.get(f"http://127.0.0.1:{port}/ok", headers=client_key).status_code
                    )
            assert codes.count(200) == 10
            assert codes.count(429) == 20
        finally:
            stop(second)
    finally:
        stop(first)


# --- memory stays bounded ---------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_memory_storage_stays_bounded(strategy: str, clock: FakeClock) -> None:
    """100,000 distinct keys expire: the next 100,000 do not double the storage."""
    mw = limiter(build("raw"), default="5/minute", strategy=strategy)
    store, plan = mw.storage, mw.rules[0].plan

    for i in range(100_000):
        mw.decider.decide_memory(plan, f"a{i}", True)
    assert len(store) == 100_000
    clock.advance(300)  # past every window (sliding counters live two windows)
    for i in range(100_000):
        mw.decider.decide_memory(plan, f"b{i}", True)
    assert len(store) <= 100_000 + 100
    assert len(store.keys()) <= 100_000 + 100


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_memory_store_matches_limits_exactly(strategy: str) -> None:
    """The memory store answers every hit as limits' strategy over its MemoryStorage does."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    steps = st.lists(
        st.tuples(
            st.sampled_from([0.0, 0.001, 0.25, 0.5, 1.0, 7.3, 19.75, 30.0, 59.9, 60.0, 61.5, 130]),
            st.sampled_from(["a", "b"]),
        ),
        max_size=40,
    )

    @settings(max_examples=60, deadline=None)
    @given(spec=st.sampled_from(["1/minute", "3/minute", "5/10 seconds", "4/second"]), ops=steps)
    def check(spec: str, ops: list[tuple[float, str]]) -> None:
        clock = FakeClock(1_800_000_000.25)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(time, "time", clock)
            mw = limiter(build("raw"), default=spec, strategy=strategy)
            reference = limits_reference(strategy)
            item = mw.rules[0].limits[0].item
            for advance, key in ops:
                clock.advance(advance)
                rejected, _, remaining, reset = mw.decider.decide_memory(
                    mw.rules[0].plan, key, True
                )
                allowed = reference.hit(item, "*", key)
                stats = reference.get_window_stats(item, "*", key)
                assert (rejected is None) == allowed
                if allowed:
                    assert remaining == stats.remaining
                    assert reset == max(0, math.ceil(stats.reset_time - clock.now))
                else:
                    assert reset == max(1, math.ceil(stats.reset_time - clock.now))

    check()


# --- FastAPI dependency, start-up warning, config, scopes --------------------------------


async def test_fastapi_dependency_shares_the_middleware(clock: FakeClock) -> None:
    """``rate_limit("2/minute")`` as a route dependency answers the same 429 contract."""
    from fastapi import Depends, FastAPI

    try:
        from buttress.fastapi import rate_limit
    except ImportError:
        from buttress.ratelimit import fastapi_dependency as rate_limit

    api = FastAPI()

    @api.get("/login", dependencies=[Depends(rate_limit("2/minute"))])
    async def login() -> dict[str, bool]:
        return {"ok": True}

    registry = CollectorRegistry()
    mw = limiter(api, registry=registry)
    async with client_for(mw) as client:
        codes = await statuses(client, "/login", 2)
        rejected = await client.get("/login")
    assert codes == [200, 200]
    assert rejected.status_code == 429
    assert rejected.json() == {"detail": "Rate limit exceeded: 2 per 1 minute. Please slow down."}
    assert rejected.headers["retry-after"] == "60"
    assert registry.get_sample_value("ratelimit_rejections_total", {"route": "/login"}) == 1


def test_memory_with_workers_warns(logs: LogCapture) -> None:
    """memory:// with several workers warns that limits multiply and names the fix."""
    message = warn_if_memory_with_workers(limited=True, storage="memory://", workers=4)
    assert message is not None
    assert "multiplied by 4" in message and "redis://" in message
    assert logs.events("rate_limit_memory_with_workers")
    assert warn_if_memory_with_workers(limited=True, storage="memory://", workers=1) is None
    assert warn_if_memory_with_workers(limited=True, storage="redis://r:6379", workers=4) is None
    assert warn_if_memory_with_workers(limited=False, storage="memory://", workers=4) is None


def test_bad_configuration_is_explained() -> None:
    """Bad limits, route keys and key settings fail at start-up naming the keyword, with a hint."""
    with pytest.raises(ValueError, match=r"default='ten per minute'.*is not a rate limit"):
        limiter(build("raw"), default="ten per minute")
    with pytest.raises(ValueError, match=r"limits=.*METHOD /path"):
        limiter(build("raw"), limits={"items": "1/minute"})
    with pytest.raises(ValueError, match=r"key='cookie'.*header:<Name>"):
        limiter(build("raw"), key="cookie")
    with pytest.raises(ValueError, match=r"strategy='token-bucket'.*moving-window"):
        limiter(build("raw"), default="1/minute", strategy="token-bucket")
    with pytest.raises(ValueError, match=r"storage='mongodb://x'.*redis://"):
        limiter(build("raw"), storage="mongodb://x")


async def test_non_http_scopes_pass_through() -> None:
    """lifespan and websocket scopes reach the app untouched."""
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    mw = limiter(app, default="1/hour")

    async def receive() -> dict[str, Any]:
        return {}

    async def send(message: Any) -> None:
        return None

    for kind in ("lifespan", "websocket", "websocket"):
        await mw({"type": kind, "path": "/ok", "headers": []}, receive, send)
    assert seen == ["lifespan", "websocket", "websocket"]


async def test_rejected_request_is_counted_under_its_route_pattern(logs: Any) -> None:
    """A 429 is counted in http_requests_total and logged under the limit's route pattern."""
    from prometheus_client import CollectorRegistry

    from tests.apps import starlette_app
    from tests.conftest import client_for

    registry = CollectorRegistry()
    stack = buttress.wrap(
        starlette_app(),
        configure_logging=False,
        registry=registry,
        rate_limits={"/items/{item_id}": "1/minute"},
    )
    async with client_for(stack) as client:
        assert (await client.get("/items/1")).status_code == 200
        assert (await client.get("/items/2")).status_code == 429
    value = registry.get_sample_value(
        "http_requests_total", {"method": "GET", "route": "/items/{item_id}", "status": "429"}
    )
    assert value == 1.0
    assert [(a["route"], a["status"]) for a in logs.access] == [
        ("/items/{item_id}", 200),
        ("/items/{item_id}", 429),
    ]


async def test_aclose_closes_the_redis_connections(redis_server: Any) -> None:
    """aclose() closes the storage's Redis connections (through limits' client attribute)."""
    import redis

    mw = limiter(build("raw"), default="5/hour", **redis_options(redis_server))
    watcher = redis.Redis.from_url(redis_server.url)
    try:
        async with client_for(mw) as client:
            assert (await client.get("/ok")).status_code == 200
        before = watcher.info("clients")["connected_clients"]
        await mw.aclose()
        after = watcher.info("clients")["connected_clients"]
    finally:
        watcher.close()
    assert before >= 2 and after == before - 1


@pytest.mark.parametrize("fail_open", [True, False])
async def test_frozen_redis_is_cut_off_by_the_budget(fail_open: bool, redis_server: Any) -> None:
    """A frozen Redis (accepts, never answers) is given up on within the decision budget, not socket timeouts.

    The storage's own socket timeouts are set to ten minutes here: without the budget the
    request would hang until the test's timeout fails it.
    """
    import signal

    if redis_server.external:
        pytest.skip("needs a redis-server of our own to freeze")
    options = redis_options(redis_server)
    options["storage_options"].update(socket_timeout=600, socket_connect_timeout=600)
    # A budget of 0.5 s, not the default 50 ms: the first decision loads the script (a few
    # round trips), which a loaded CI machine can stretch past 50 ms and answer 503 before
    # anything is frozen. Still a thousandth of the socket timeouts it must cut off.
    mw = limiter(build("raw"), default="2/hour", fail_open=fail_open, retry_budget=0.5, **options)
    try:
        async with client_for(mw) as client:
            assert (await client.get("/ok")).status_code == 200  # connected and counted
            os.kill(redis_server.proc.pid, signal.SIGSTOP)
            try:
                frozen = (await client.get("/ok")).status_code
            finally:
                os.kill(redis_server.proc.pid, signal.SIGCONT)
            after = [(await client.get("/ok")).status_code for _ in range(3)]
    finally:
        await mw.aclose()
    assert frozen == (200 if fail_open else 503)
    assert 429 in after  # limiting resumes once Redis answers again
