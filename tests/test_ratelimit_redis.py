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
SPECS = ["1/minute", "3/minute", "5/10 seconds", "4/second", "2/second;3/minute", "3/10 seconds;5/minute"]
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
                assert mine == theirs, (step, kind, key, cost)
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


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_a_decision_is_one_round_trip(strategy: str, redis_server: Any) -> None:
    """Charging two limits and answering their headers is one EVALSHA and nothing else."""
    script, _, _ = deciders(redis_server.url, strategy)
    rule = Rule("r", parse_limits("10/second;100/hour"), 0.0)
    pairs = [(rule, limit) for limit in rule.limits]
    try:
        await script.decide(pairs, "k", want_stats=True)  # connects, loads the script
        before = command_calls(redis_server.url)
        outcome = await script.decide(pairs, "k", want_stats=True)
        await script.peek(pairs, "k")
        after = command_calls(redis_server.url)
    finally:
        await close_storage(script.limiter.storage)  # type: ignore[union-attr]
    assert outcome[1] is rule.limits[0] and outcome[2] == 8  # the tightest: 10/second, 2 spent
    changed = {name: after[name] - before.get(name, 0) for name in after}
    assert {name: n for name, n in changed.items() if n} == {
        "cmdstat_evalsha": 2,
        "cmdstat_info": 1,
    }


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
    """memory:// keeps its own store; a memcached storage keeps limits.aio."""
    assert Decider(storage_for("memory://"), "fixed-window", 0.05).script is None
    memcached = Decider(storage_for("memcached://127.0.0.1:11211"), "fixed-window", 0.05)
    assert memcached.script is None and memcached.limiter is not None


def test_cluster_keys_of_one_client_share_a_hash_slot() -> None:
    """On a cluster every key of one decision is in one hash slot, whatever the rule's name."""
    from redis.crc import key_slot

    rule = Rule("GET /items/{item_id}", parse_limits("2/second;3/minute"), 0.0)
    pairs = [(rule, limit) for limit in rule.limits]
    for strategy in STRATEGIES:
        script = ScriptDecider(None, "LIMITS", True, strategy)
        _, keys = script._keys(pairs, "203.0.113.{7}")
        assert len({key_slot(k.encode()) for k in keys}) == 1, keys
