"""Redis decisions: one script call answers as limits' own strategies do, hit by hit."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from buttress.ratelimit_decide import Decider
from buttress.ratelimit_redis import ScriptDecider
from buttress.ratelimit_rules import Rule, parse_limits
from buttress.ratelimit_storage import close_storage, storage_for
from tests.test_ratelimit import STRATEGIES, FakeClock

#: Time steps in ms. Redis keeps TTLs in server time, so "time passes" for a key by
#: lowering its TTL (see ``age``); the steps keep every TTL clear of a rounding edge.
ADVANCES = [0, 0, 250, 1000, 7250, 19750, 30000, 59750, 60000, 61250, 130000]
SPECS = [
    "1/minute",
    "3/minute",
    "5/10 seconds",
    "4/second",
    "2/second;3/minute",
    "3/10 seconds;5/minute",
]
STEPS = st.lists(
    st.tuples(
        st.sampled_from(ADVANCES),
        st.sampled_from(["a", "b"]),
        st.sampled_from([1, 1, 2, 3]),
        st.sampled_from(["hit", "stats", "peek"]),
    ),
    max_size=30,
)


async def age(client: Any, prefixes: tuple[str, ...], ms: int) -> None:
    """Let ``ms`` pass for every key of ``prefixes``: each TTL drops by ``ms``.

    TTLs are then set to 437 ms past a whole second (the two prefixes, written a
    moment apart, get the same TTLs), so neither side's answer sits on a rounding edge.
    """
    for prefix in prefixes:
        async for name in client.scan_iter(match=f"{prefix}:*"):
            left = await client.pttl(name)
            if left < 0:
                continue
            snapped = round((left - ms) / 1000) * 1000 - 563
            if snapped <= 0:
                await client.delete(name)
            else:
                await client.pexpire(name, snapped)


def same_answer(mine: Any, theirs: Any) -> bool:
    """Equal, but for one instant: the reset of a sliding window that has just begun.

    limits reads that window's TTLs in a second call: a millisecond later they say a
    whole period (60 s for a minute), in the same millisecond 0 s (1 s on a refusal).
    The script reads them in the same instant and answers the period, always.
    """
    if mine == theirs or mine is None or theirs is None:
        return bool(mine == theirs)
    *head, reset = mine
    *their_head, their_reset = theirs
    edge = their_reset in (0, 1) and 0 < reset <= head[1].expiry
    return bool(head == their_head and edge)


def deciders(url: str, strategy: str) -> tuple[Decider, Decider, tuple[str, str]]:
    """The script decider and limits' own strategy (the reference), on fresh prefixes."""
    mine, theirs = f"s-{uuid.uuid4().hex}", f"l-{uuid.uuid4().hex}"
    script = Decider(storage_for(url, key_prefix=mine), strategy, 5.0)
    reference = Decider(storage_for(url, key_prefix=theirs), strategy, 5.0, script=False)
    assert script.script is not None and reference.script is None
    return script, reference, (mine, theirs)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_script_answers_as_limits_strategies_do(
    strategy: str, redis_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hits (with a cost, with and without stats) and peeks answer exactly as limits.aio does."""
    clock = FakeClock(1_800_000_000.25)
    monkeypatch.setattr(time, "time", clock)

    async def run(spec: str, ops: list[tuple[int, str, int, str]]) -> None:
        script, reference, prefixes = deciders(redis_server.url, strategy)
        rule = Rule("r", parse_limits(spec), 0.0)
        pairs = [(rule, limit) for limit in rule.limits]
        try:
            for step, (advance, key, cost, kind) in enumerate(ops):
                clock.advance(advance / 1000)
                await age(script.script.client, prefixes, advance)  # type: ignore[union-attr]
                if kind == "peek":
                    mine: Any = await script.peek(pairs, key, cost)
                    theirs: Any = await reference.peek(pairs, key, cost)
                else:
                    stats = kind == "stats"
                    mine = await script.decide(pairs, key, want_stats=stats, cost=cost)
                    theirs = await reference.decide(pairs, key, want_stats=stats, cost=cost)
                assert same_answer(mine, theirs), (step, kind, key, cost, mine, theirs)
        finally:
            await close_storage(script.limiter.storage)  # type: ignore[union-attr]
            await close_storage(reference.limiter.storage)  # type: ignore[union-attr]

    @settings(max_examples=40, deadline=None)
    @given(spec=st.sampled_from(SPECS), ops=STEPS)
    def check(spec: str, ops: list[tuple[int, str, int, str]]) -> None:
        asyncio.run(run(spec, ops))

    check()


def command_calls(url: str) -> dict[str, int]:
    import redis

    client = redis.Redis.from_url(url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return {name: int(value["calls"]) for name, value in stats.items()}


#: What the scripts call inside Redis (counted in commandstats, but no round trip).
INSIDE_SCRIPTS = {
    "get",
    "ttl",
    "incrby",
    "expire",
    "lindex",
    "lpush",
    "ltrim",
    "pttl",
    "rename",
    "set",
    "exists",
}


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_a_decision_is_one_round_trip(strategy: str, redis_server: Any) -> None:
    """Charging two limits and answering their headers is one EVALSHA; so is a peek."""
    script, _, _ = deciders(redis_server.url, strategy)
    rule = Rule("r", parse_limits("10/second;100/hour"), 0.0)
    pairs = [(rule, limit) for limit in rule.limits]
    sent: list[dict[str, int]] = []
    try:
        await script.decide(pairs, "k", want_stats=True)  # connects, loads the script
        for call in (
            lambda: script.decide(pairs, "k", want_stats=True),
            lambda: script.peek(pairs, "k"),
        ):
            before = command_calls(redis_server.url)
            outcome = await call()
            after = command_calls(redis_server.url)
            changed = {
                name.removeprefix("cmdstat_"): n - before.get(name, 0) for name, n in after.items()
            }
            sent.append(
                {
                    name: n
                    for name, n in changed.items()
                    if n and name not in INSIDE_SCRIPTS | {"info", "hello"}
                }
            )
            if len(sent) == 1:
                assert outcome[1] is rule.limits[0] and outcome[2] == 8  # 10/second, 2 spent
    finally:
        await close_storage(script.limiter.storage)  # type: ignore[union-attr]
    # ("info" and, with redis-py 8, "hello" are the counting client itself.)
    assert sent == [{"evalsha": 1}] * 2


async def test_a_flushed_script_cache_is_reloaded(redis_server: Any) -> None:
    """After SCRIPT FLUSH (a restarted or new Redis) decisions go on, counting from where they were."""
    import redis

    script, _, _ = deciders(redis_server.url, "fixed-window")
    rule = Rule("r", parse_limits("2/hour"), 0.0)
    pairs = [(rule, limit) for limit in rule.limits]
    try:
        first = await script.decide(pairs, "k", want_stats=True)
        client = redis.Redis.from_url(redis_server.url)
        try:
            client.script_flush()
        finally:
            client.close()
        second = await script.decide(pairs, "k", want_stats=True)
        third = await script.decide(pairs, "k", want_stats=True)
    finally:
        await close_storage(script.limiter.storage)  # type: ignore[union-attr]
    assert [first[2], second[2]] == [1, 0] and third[0] is rule


def test_only_redispy_storages_take_the_script() -> None:
    """memory:// keeps its own store; any other limits.aio storage keeps limits.aio."""
    assert Decider(storage_for("memory://"), "fixed-window", 0.05).script is None
    other = Decider(storage_for("async+memory://"), "fixed-window", 0.05)
    assert other.script is None and other.limiter is not None


def test_cluster_keys_of_one_client_share_a_hash_slot() -> None:
    """On a cluster every key of one decision is in one hash slot, whatever the rule's name."""
    from redis.crc import key_slot

    rule = Rule("GET /items/{item_id}", parse_limits("2/second;3/minute"), 0.0)
    pairs = [(rule, limit) for limit in rule.limits]
    for strategy in STRATEGIES:
        script = ScriptDecider(None, "LIMITS", True, strategy)
        _, keys = script._keys(pairs, "203.0.113.{7}")
        assert len({key_slot(k.encode()) for k in keys}) == 1, keys


async def test_warm_connects_and_loads_the_script(redis_server: Any) -> None:
    """warm() at startup loads the script, so the first decision is one EVALSHA; a dead Redis says False."""
    script, _, _ = deciders(redis_server.url, "moving-window")
    down = Decider(storage_for("redis://127.0.0.1:1/0"), "moving-window", 0.05)
    try:
        client = script.script.client  # type: ignore[union-attr]
        await client.script_flush()
        assert await script.warm() is True
        assert await client.script_exists(script.script.sha) == [True]  # type: ignore[union-attr]
        assert await down.warm() is False
    finally:
        await close_storage(script.limiter.storage)  # type: ignore[union-attr]
        await close_storage(down.limiter.storage)  # type: ignore[union-attr]


async def test_lifespan_startup_connects_before_the_first_request(redis_server: Any) -> None:
    """On lifespan start-up the middleware connects to Redis and loads its script, before any request."""
    import redis

    from buttress.ratelimit import RateLimitMiddleware

    events: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        events.append(message["type"])
        await send({"type": "lifespan.startup.complete"})

    prefix = f"test-{uuid.uuid4().hex}"
    mw = RateLimitMiddleware(
        app, default="5/hour", storage=redis_server.url, storage_options={"key_prefix": prefix}
    )
    watcher = redis.Redis.from_url(redis_server.url)
    try:
        before = watcher.info("clients")["connected_clients"]
        sent: list[Any] = []

        async def receive() -> dict[str, Any]:
            return {"type": "lifespan.startup"}

        async def send(message: Any) -> None:
            sent.append(message)

        await mw({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
        after = watcher.info("clients")["connected_clients"]
    finally:
        watcher.close()
        await mw.aclose()
    assert events == ["lifespan.startup"] and sent == [{"type": "lifespan.startup.complete"}]
    assert after == before + 1
