"""What slowapi users ask for: shared limits, costs, conditional exemptions, per-key limits, counting failures."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

import buttress
from buttress.config import ConfigError, Settings
from tests.apps import build
from tests.conftest import client_for
from tests.test_ratelimit import FakeClock, statuses


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock(1_800_000_000.25)
    monkeypatch.setattr(time, "time", fake)
    return fake


def stack(framework: str, **overrides: Any) -> Any:
    return buttress.wrap(build(framework), configure_logging=False, metrics=False, **overrides)


async def test_routes_of_a_shared_group_spend_one_budget(framework: str, clock: FakeClock) -> None:
    """Two routes sharing "grp" (3/minute) are limited together, not 3 each."""
    limits = {
        "GET /ok": {"limit": "3/minute", "shared": "grp"},
        "GET /items/{item_id}": {"limit": "3/minute", "shared": "grp"},
    }
    async with client_for(stack(framework, rate_limits=limits)) as client:
        codes = [
            (await client.get(path)).status_code for path in ("/ok", "/items/1", "/ok", "/items/2")
        ]
    assert codes == [200, 200, 200, 429]


def test_shared_routes_must_agree_on_the_limit() -> None:
    """A shared group whose routes name different limits is refused at start-up."""
    limits = {
        "GET /ok": {"limit": "3/minute", "shared": "grp"},
        "GET /log": {"limit": "5/minute", "shared": "grp"},
    }
    with pytest.raises(ValueError, match="share 'grp' but not the same limit"):
        stack("raw", rate_limits=limits)


async def test_a_costly_route_spends_more(framework: str, clock: FakeClock) -> None:
    """A route with cost 2 under 5/minute lets two requests through, not five."""
    limits = {"GET /items/{item_id}": {"limit": "5/minute", "cost": 2}}
    async with client_for(stack(framework, rate_limits=limits)) as client:
        assert await statuses(client, "/items/7", 3) == [200, 200, 429]


async def test_only_failures_are_counted_for_login_throttling(
    framework: str, clock: FakeClock
) -> None:
    """count=failures charges 4xx/5xx answers only: successes pass freely, failures are capped."""
    limits = {
        "GET /conflict": {"limit": "2/minute", "count": "failures"},
        "GET /ok": {"limit": "2/minute", "count": "failures"},
    }
    async with client_for(stack(framework, rate_limits=limits)) as client:
        assert await statuses(client, "/ok", 4) == [200] * 4
        failures = await statuses(client, "/conflict", 3)
    assert failures == [409, 409, 429]


async def test_only_successes_are_counted(clock: FakeClock) -> None:
    """count=successes leaves failures free and caps successes."""
    limits = {
        "/ok": {"limit": "2/minute", "count": "successes"},
        "/conflict": {"limit": "1/minute", "count": "successes"},
    }
    async with client_for(stack("starlette", rate_limits=limits)) as client:
        assert await statuses(client, "/conflict", 3) == [409, 409, 409]
        assert await statuses(client, "/ok", 3) == [200, 200, 429]


async def test_exempt_when_skips_the_limit(framework: str, clock: FakeClock) -> None:
    """A request for which exempt_when(scope) is true is never limited."""

    def internal(scope: Any) -> bool:
        return (b"x-internal", b"yes") in scope["headers"]

    from buttress.ratelimit import RateLimitMiddleware

    app = RateLimitMiddleware(build(framework), default="1/minute", exempt_when=internal)
    async with client_for(app) as client:
        assert await statuses(client, "/ok", 3, headers={"X-Internal": "yes"}) == [200] * 3
        assert await statuses(client, "/ok", 2) == [200, 429]


async def test_exempt_patterns_take_parameters(clock: FakeClock) -> None:
    """BUTTRESS_RATE_LIMIT_EXEMPT accepts patterns like /items/{item_id}."""
    app = stack("starlette", rate_limit="1/minute", rate_limit_exempt="/metrics,/items/{item_id}")
    async with client_for(app) as client:
        assert await statuses(client, "/items/1", 3) == [200] * 3
        assert await statuses(client, "/ok", 2) == [200, 429]


async def test_the_limit_may_depend_on_the_key(clock: FakeClock) -> None:
    """A callable gives paid clients more; it is asked once per key."""
    asked: list[str] = []

    def plan(key: str) -> str:
        asked.append(key)
        return "4/minute" if key.startswith("paid") else "1/minute"

    def who(scope: Any) -> str:
        return dict(scope["headers"]).get(b"x-user", b"anon").decode()

    from buttress.ratelimit import RateLimitMiddleware

    app = RateLimitMiddleware(build("raw"), default=plan, key=who)
    async with client_for(app) as client:
        paid = await statuses(client, "/ok", 5, headers={"X-User": "paid-1"})
        free = await statuses(client, "/ok", 2, headers={"X-User": "free-1"})
    assert paid == [200] * 4 + [429]
    assert free == [200, 429]
    assert asked == ["paid-1", "free-1"]


@pytest.mark.parametrize(
    ("style", "present", "absent"),
    [
        ("ietf", "ratelimit-limit", "x-ratelimit-limit"),
        ("x", "x-ratelimit-limit", "ratelimit-limit"),
        ("both", "x-ratelimit-limit", None),
    ],
)
async def test_header_names_follow_the_chosen_style(
    style: str, present: str, absent: str | None, clock: FakeClock
) -> None:
    """BUTTRESS_RATE_LIMIT_HEADER_STYLE picks RateLimit-*, X-RateLimit-* (reset as Unix time) or both."""
    app = stack("starlette", rate_limit="2/minute", rate_limit_header_style=style)
    async with client_for(app) as client:
        allowed = await client.get("/ok")
        await client.get("/ok")
        rejected = await client.get("/ok")
    for response in (allowed, rejected):
        assert present in response.headers
        if absent:
            assert absent not in response.headers
    if style != "ietf":
        assert int(rejected.headers["x-ratelimit-reset"]) >= int(clock.now)
        assert rejected.headers["x-ratelimit-remaining"] == "0"


def test_route_options_from_the_environment_are_checked() -> None:
    """BUTTRESS_RATE_LIMITS accepts per-route objects and names what is wrong in them."""
    good = {"POST /auth/login": {"limit": "5/minute", "shared": "auth", "count": "failures"}}
    settings = Settings.from_env({"BUTTRESS_RATE_LIMITS": json.dumps(good)})
    assert settings.rate_limits["POST /auth/login"]["shared"] == "auth"
    for bad, hint in [
        ({"/a": {"limit": "5/minute", "cost": 0}}, "'cost'"),
        ({"/a": {"limit": "5/minute", "count": "errors"}}, "'count'"),
        ({"/a": {"limit": "5/minute", "sharde": "x"}}, "unknown keys"),
        ({"/a": {"cost": 2}}, "with 'limit'"),
    ]:
        with pytest.raises(ConfigError, match=hint):
            Settings.from_env({"BUTTRESS_RATE_LIMITS": json.dumps(bad)})


async def test_rate_limit_headers_ride_on_every_answer_even_the_contracts_500(
    framework: str, clock: FakeClock
) -> None:
    """The budget a request spent is on its answer: a 200, the app's 404 and buttress's own 500."""
    app = buttress.wrap(build(framework), configure_logging=False, rate_limit="10/minute")
    async with client_for(app) as client:
        answers = [await client.get(path) for path in ("/items/1", "/nothing-here", "/boom")]
    assert [r.status_code for r in answers] == [200, 404, 500]
    assert [r.headers.get("ratelimit-remaining") for r in answers] == ["9", "8", "7"]
    assert all(r.headers.get("x-request-id") for r in answers)
    assert answers[2].json() == {"detail": "Internal server error"}
