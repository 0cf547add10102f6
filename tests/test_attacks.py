"""An attacker's checklist: each test is one way a client tries to get past buttress.

Spoofed forwarding headers, path spellings and root paths that dodge a limit, key floods,
IPv6 address rotation, secrets in settings output, scrapes that stall the loop. Every
loop is bounded in count; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import threading
import time
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

import buttress
from buttress._request import client_ip
from buttress.config import ConfigError, Settings, mask_uri
from buttress.ratelimit import RateLimitMiddleware
from tests.apps import build
from tests.asgi_driver import http_scope
from tests.conftest import LogCapture, client_for, start_server, stop


class FakeClock:
    """``time.time`` under test control, so windows never roll over mid-test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock(1_800_000_000.25)
    monkeypatch.setattr(time, "time", fake)
    return fake


def _nets(*cidrs: str) -> tuple[Any, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


# --- 1. forwarding headers the client chooses ------------------------------------------


async def test_forwarded_header_added_by_the_client_is_ignored(
    logs: LogCapture, clock: FakeClock
) -> None:
    """Behind an appending proxy, a client's own Forwarded header neither rotates its key nor its logged IP."""
    app = buttress.wrap(
        build("starlette"),
        configure_logging=False,
        metrics=False,
        trusted_proxies="127.0.0.1",
        rate_limit="3/minute",
    )
    # The proxy (127.0.0.1) appends the real client to X-Forwarded-For and passes the
    # client's own Forwarded header through untouched, as nginx and most ingresses do.
    async with client_for(app, client=("127.0.0.1", 4000)) as client:
        codes = [
            (
                await client.get(
                    "/ok",
                    headers={
                        "Forwarded": f"for=203.0.113.{i}",
                        "X-Forwarded-For": "198.51.100.9",
                    },
                )
            ).status_code
            for i in range(6)
        ]
    assert codes == [200, 200, 200, 429, 429, 429]
    assert {line["client_ip"] for line in logs.access} == {"198.51.100.9"}


async def test_victim_budget_cannot_be_spent_through_a_header_we_do_not_read(
    clock: FakeClock,
) -> None:
    """for=<victim> in an unconfigured header spends the attacker's budget, not the victim's."""
    app = buttress.wrap(
        build("raw"),
        configure_logging=False,
        metrics=False,
        trusted_proxies="127.0.0.1",
        rate_limit="2/minute",
    )
    async with client_for(app, client=("127.0.0.1", 4000)) as client:
        for _ in range(3):
            await client.get(
                "/ok", headers={"X-Real-IP": "192.0.2.50", "X-Forwarded-For": "198.51.100.66"}
            )
        victim = await client.get("/ok", headers={"X-Forwarded-For": "192.0.2.50"})
    assert victim.status_code == 200


@pytest.mark.parametrize(
    ("header", "headers", "expected"),
    [
        ("x-forwarded-for", [(b"forwarded", b"for=6.6.6.6"), (b"x-forwarded-for", b"1.2.3.4")], "1.2.3.4"),
        ("forwarded", [(b"forwarded", b"for=1.2.3.4"), (b"x-forwarded-for", b"6.6.6.6")], "1.2.3.4"),
        ("x-real-ip", [(b"x-real-ip", b"1.2.3.4"), (b"x-forwarded-for", b"6.6.6.6")], "1.2.3.4"),
        ("x-real-ip", [(b"x-forwarded-for", b"6.6.6.6")], "10.0.0.2"),
    ],
)
def test_only_the_configured_forwarding_header_is_believed(
    header: str, headers: list[Any], expected: str
) -> None:
    """BUTTRESS_FORWARDED_HEADER picks the one header the proxy writes; the others are ignored."""
    scope = http_scope(headers=headers, client=("10.0.0.2", 1234))
    assert client_ip(scope, _nets("10.0.0.0/8"), header) == expected


def test_ipv4_mapped_peer_is_checked_against_ipv4_proxies() -> None:
    """A dual-stack socket's ::ffff:127.0.0.1 peer is the trusted IPv4 proxy 127.0.0.1."""
    scope = http_scope(headers=[(b"x-forwarded-for", b"1.2.3.4")], client=("::ffff:127.0.0.1", 1))
    assert client_ip(scope, _nets("127.0.0.1/32")) == "1.2.3.4"
    untrusted = http_scope(headers=[(b"x-forwarded-for", b"1.2.3.4")], client=("::ffff:8.8.8.8", 1))
    assert client_ip(untrusted, _nets("127.0.0.1/32")) == "8.8.8.8"


def test_trusting_every_address_warns_at_start_up(logs: LogCapture) -> None:
    """BUTTRESS_TRUSTED_PROXIES=0.0.0.0/0 starts, with a warning that any client picks its IP."""
    buttress.wrap(build("raw"), configure_logging=False, trusted_proxies="0.0.0.0/0,::/0")
    warnings = logs.events("trusted_proxies_trust_everyone")
    assert {w["network"] for w in warnings} == {"0.0.0.0/0", "::/0"}


def test_unknown_forwarding_header_stops_start_up() -> None:
    """A forwarding header buttress does not know is a configuration error naming it."""
    with pytest.raises(ConfigError, match="forwarded_header='x-client-ip'"):
        buttress.wrap(build("raw"), configure_logging=False, forwarded_header="x-client-ip")


# --- 2. path spellings and root paths that dodge a limit ------------------------------

VARIANTS = ("/ok", "/ok/", "//ok", "/ok//", "///ok")


@pytest.mark.parametrize("root", ["", "/api"])
async def test_no_path_spelling_reaches_a_limited_handler_past_its_limit(
    framework: str, root: str, clock: FakeClock
) -> None:
    """Every spelling a framework routes to GET /ok is charged to its limit, with or without a root path."""
    app = buttress.wrap(
        build(framework),
        configure_logging=False,
        metrics=False,
        rate_limits={"GET /ok": "2/minute"},
    )
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 1), root_path=root)
    served = limited = 0
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        for _ in range(3):
            for variant in VARIANTS:
                response = await client.get(f"http://t{root}{variant}", follow_redirects=False)
                if response.status_code == 200 and response.json() == {"ok": True}:
                    served += 1
                else:
                    limited += response.status_code == 429
                    assert response.status_code in (301, 307, 308, 404, 429), response
    # A spelling the framework does not route may be charged too (at worst a 404 spends
    # budget); one it routes never gets past the limit.
    assert served <= 2
    assert limited >= 10


async def test_head_is_charged_to_the_get_limit(framework: str, clock: FakeClock) -> None:
    """HEAD runs the GET handler in most frameworks, so it spends the GET limit."""
    app = buttress.wrap(
        build(framework), configure_logging=False, metrics=False, rate_limits={"GET /ok": "2/minute"}
    )
    async with client_for(app) as client:
        heads = [(await client.head("/ok")).status_code for _ in range(2)]
        after = await client.get("/ok")
    assert after.status_code == 429
    assert 429 not in heads


async def test_path_pattern_covers_every_segment(clock: FakeClock) -> None:
    """A {name:path} pattern limits /files/a/b/c as well as /files/a."""
    calls: list[str] = []

    async def files(scope: Any, receive: Any, send: Any) -> None:
        calls.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    app = RateLimitMiddleware(
        files, limits={"/files/{name:path}": "2/minute"}, registry=CollectorRegistry()
    )
    async with client_for(app) as client:
        codes = [(await client.get(p)).status_code for p in ("/files/a", "/files/a/b/c", "/files/x/y")]
    assert codes == [200, 200, 429]


async def test_exemptions_and_limits_apply_under_a_root_path(clock: FakeClock) -> None:
    """Under --root-path the metrics scrape is exempt and unlogged, and route limits still apply."""
    app = buttress.wrap(
        build("starlette"),
        configure_logging=False,
        rate_limit="2/minute",
        rate_limits={"GET /items/{item_id}": "1/minute"},
    )
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 1), root_path="/api")
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        scrapes = [(await client.get("/api/metrics")).status_code for _ in range(4)]
        items = [(await client.get(f"/api/items/{i}")).status_code for i in range(2)]
    assert scrapes == [200, 200, 200, 200]
    assert items == [200, 429]


@pytest.mark.slow
@pytest.mark.parametrize("server", ["uvicorn", "hypercorn"])
def test_root_path_limits_hold_behind_a_real_server(server: str) -> None:
    """uvicorn prefixes the root path, hypercorn does not: the limit holds under both."""
    env = {
        "BUTTRESS_RATE_LIMITS": '{"GET /items/{item_id}": "2/minute"}',
        "BUTTRESS_CONFIGURE_LOGGING": "false",
        "TEST_WRAPPED": "1",
    }
    if server == "uvicorn":
        args = ["-m", "uvicorn", "tests.served:wrapped", "--port", "{port}", "--root-path", "/api",
                "--log-level", "warning"]
        paths = ["/items/1", "/items/2", "/items/3"]  # uvicorn adds /api itself
    else:
        args = ["-m", "hypercorn", "tests.served:wrapped", "--bind", "127.0.0.1:{port}",
                "--root-path", "/api"]
        paths = ["/api/items/1", "/api//items/2", "/api/items/3/"]
    proc, port = start_server(args, env)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            codes = [client.get(p).status_code for p in paths]
    finally:
        stop(proc)
    assert codes.count(429) >= 1
    assert codes[0] == 200 and codes[-1] == 429


# --- 3. keys the client chooses -------------------------------------------------------


async def test_random_api_keys_do_not_escape_the_ip_limit(clock: FakeClock) -> None:
    """With a header key, a fresh random key per request still meets the per-IP limit."""
    app = buttress.wrap(
        build("raw"),
        configure_logging=False,
        metrics=False,
        rate_limit="100/minute",
        rate_limit_key="header:X-API-Key",
        rate_limit_ip="5/minute",
    )
    async with client_for(app) as client:
        codes = [
            (await client.get("/ok", headers={"X-API-Key": f"k-{i}"})).status_code
            for i in range(8)
        ]
    assert codes == [200] * 5 + [429] * 3


async def test_stored_api_key_digest_is_keyed_by_a_server_secret(clock: FakeClock) -> None:
    """The stored form of an API key is a digest keyed by BUTTRESS_RATE_LIMIT_KEY_SECRET, not guessable offline."""
    mw = RateLimitMiddleware(
        build("raw"),
        default="5/minute",
        key="header:X-API-Key",
        key_secret="s3cret-of-the-server",
        registry=CollectorRegistry(),
    )
    async with client_for(mw) as client:
        await client.get("/ok", headers={"X-API-Key": "weak"})
    stored = mw.storage.keys()
    unkeyed = "header:" + hashlib.blake2b(b"weak", digest_size=16).hexdigest()
    assert len(stored) == 1 and "weak" not in next(iter(stored))
    assert unkeyed not in stored


async def test_ipv6_rotation_within_a_64_is_one_client(clock: FakeClock) -> None:
    """A client rotating addresses inside its /64 is limited as one client."""
    mw = RateLimitMiddleware(build("raw"), default="3/minute", registry=CollectorRegistry())
    codes = []
    for i in range(5):
        async with client_for(mw, client=(f"2001:db8:1:2::{i + 1:x}", 1)) as client:
            codes.append((await client.get("/ok")).status_code)
    async with client_for(mw, client=("2001:db8:1:3::1", 1)) as client:
        other = (await client.get("/ok")).status_code
    assert codes == [200, 200, 200, 429, 429]
    assert other == 200


async def test_key_flood_is_capped_and_evictions_are_counted(clock: FakeClock) -> None:
    """Past BUTTRESS_RATE_LIMIT_MAX_KEYS the memory store evicts (and counts) instead of growing."""
    registry = CollectorRegistry()
    mw = RateLimitMiddleware(
        build("raw"),
        default="5/day",
        key="header:X-API-Key",
        max_keys=1_000,
        registry=registry,
    )
    async with client_for(mw) as client:
        for i in range(1_500):
            await client.get("/ok", headers={"X-API-Key": f"flood-{i}"})
    assert len(mw.storage) == 1_000
    assert registry.get_sample_value("ratelimit_evictions_total") == 500


def test_bad_key_cap_is_refused() -> None:
    """A key cap that is not a number is refused at start-up naming the variable."""
    with pytest.raises(ConfigError, match="BUTTRESS_RATE_LIMIT_MAX_KEYS='lots'"):
        Settings.from_env({"BUTTRESS_RATE_LIMIT_MAX_KEYS": "lots"})


# --- 7. secrets in the settings shown to operators -------------------------------------


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("redis://u:p@ss@h:6379/0", "redis://***@h:6379/0"),
        ("redis://h/0?password=X", "redis://h/0?password=***"),
        ("redis://:pw@h:6379?ssl_cert_reqs=none&password=X", "redis://***@h:6379?ssl_cert_reqs=none&password=***"),
        ("redis+sentinel://u:p@s1:26379,s2:26379/mymaster?sentinel_password=Y", "redis+sentinel://***@s1:26379,s2:26379/mymaster?sentinel_password=***"),
        ("memcached://h:11211", "memcached://h:11211"),
    ],
)
def test_every_credential_form_is_masked(uri: str, shown: str) -> None:
    """buttress config masks user info and secret-looking query parameters in storage URIs."""
    assert mask_uri(uri) == shown
    settings = Settings.from_env({"BUTTRESS_RATE_LIMIT_STORAGE": uri})
    assert settings.redacted()["BUTTRESS_RATE_LIMIT_STORAGE"] == shown
    assert "p@ss" not in repr(settings) and "pw" not in str(settings.redacted())


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BUTTRESS_METRICS_TOKEN", "tøken-ä-€"),
        ("BUTTRESS_METRICS_NAMESPACE", "shop-api"),
        ("BUTTRESS_METRICS_BUCKETS", "0.1,nan,1"),
        ("BUTTRESS_RETRY_WAIT_MIN", "10"),
    ],
)
def test_settings_that_would_fail_at_run_time_fail_at_start_up(variable: str, value: str) -> None:
    """Values that used to pass `buttress config` and then break requests are refused up front."""
    with pytest.raises(ConfigError, match=variable):
        Settings.from_env({variable: value})


def test_secret_values_are_masked_in_error_messages() -> None:
    """A bad secret setting is named in the error without echoing the secret."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"BUTTRESS_METRICS_TOKEN": "tøp-secret-€"})
    assert "secret" not in str(info.value)


# --- 10. scrapes that stall the loop ---------------------------------------------------


async def test_a_slow_scrape_does_not_stall_other_requests() -> None:
    """Encoding /metrics runs off the event loop: a request completes while a scrape is encoding."""
    registry = CollectorRegistry()
    release = threading.Event()
    entered = threading.Event()

    class SlowCollector:
        def collect(self) -> Any:
            entered.set()
            release.wait(timeout=10)  # blocks whoever encodes: the loop, if it did
            return iter(())

    app = buttress.wrap(build("starlette"), configure_logging=False, registry=registry)
    registry.register(SlowCollector())  # type: ignore[arg-type]
    order: list[str] = []
    async with client_for(app) as client:

        async def scrape() -> None:
            await client.get("/metrics")
            order.append("scrape")

        task = asyncio.create_task(scrape())
        assert await asyncio.to_thread(entered.wait, 10)  # the scrape is encoding
        response = await client.get("/ok")
        order.append("request")
        release.set()
        await task
    assert response.status_code == 200
    assert order == ["request", "scrape"]


async def test_concurrent_scrapes_share_one_encoding() -> None:
    """A flood of scrapes costs one encoding at a time, not one per request."""
    registry = CollectorRegistry()
    calls = 0
    release = threading.Event()

    class CountingCollector:
        def collect(self) -> Any:
            nonlocal calls
            calls += 1
            release.wait(timeout=10)
            return iter(())

    app = buttress.wrap(build("raw"), configure_logging=False, registry=registry)
    registry.register(CountingCollector())  # type: ignore[arg-type]
    async with client_for(app) as client:
        tasks = [asyncio.create_task(client.get("/metrics")) for _ in range(20)]
        for _ in range(50):  # let every scrape reach the endpoint while the first encodes
            await asyncio.sleep(0)
        release.set()
        responses = await asyncio.gather(*tasks)
    assert {r.status_code for r in responses} == {200}
    assert calls < 20
