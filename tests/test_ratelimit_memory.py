"""The memory:// store answers every hit (and every peek) as limits' own strategies do."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from buttress.ratelimit_memory import MemoryStore
from tests.test_ratelimit import STRATEGIES, FakeClock, limits_reference

STEPS = st.lists(
    st.tuples(
        st.sampled_from([0.0, 0.001, 0.25, 0.5, 1.0, 7.3, 19.75, 30.0, 59.9, 60.0, 61.5, 130]),
        st.sampled_from(["a", "b"]),
        st.sampled_from([1, 1, 2, 3]),
    ),
    max_size=40,
)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_hits_with_a_cost_and_peeks_match_limits(strategy: str) -> None:
    """Hits costing 1-3 and side-effect-free peeks agree with limits' hit(cost=) and test(cost=)."""
    from limits import parse

    @settings(max_examples=60, deadline=None)
    @given(spec=st.sampled_from(["1/minute", "3/minute", "5/10 seconds", "4/second"]), ops=STEPS)
    def check(spec: str, ops: list[tuple[float, str, int]]) -> None:
        clock = FakeClock(1_800_000_000.25)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(time, "time", clock)
            item = parse(spec)
            store = MemoryStore()
            table = store.table(strategy, "r", item.amount, item.get_expiry())
            hit = getattr(store, strategy.replace("-", "_"))
            reference = limits_reference(strategy)
            for advance, key, cost in ops:
                clock.advance(advance)
                peeked = store.peek(
                    strategy, table, key, item.amount, item.get_expiry(), clock.now, cost
                )
                assert peeked == reference.test(item, "r", key, cost=cost)
                allowed, _, _ = hit(table, key, item.amount, item.get_expiry(), clock.now, cost)
                assert allowed == reference.hit(item, "r", key, cost=cost)

    check()


def test_store_keeps_at_most_max_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past max_keys the keys nearest their deadline are evicted, counted and reported."""
    clock = FakeClock(1_800_000_000.25)
    monkeypatch.setattr(time, "time", clock)
    told: list[int] = []
    store = MemoryStore(max_keys=100)
    store.on_evict = told.append
    table = store.table("fixed-window", "r", 5, 60)
    for i in range(250):
        clock.now += 0.01
        store.fixed_window(table, f"k{i}", 5, 60, clock.now)
    assert len(store) == 100
    assert store.evicted == 150 == sum(told)
    assert store.keys() == {f"k{i}" for i in range(150, 250)}  # the oldest windows went first


T0 = 1_800_000_000.25


def test_expired_keys_are_dropped_by_later_hits_in_every_table() -> None:
    """Fixed, moving and sliding keys past their windows go, a few per hit of any table."""
    store = MemoryStore()
    fixed = store.table("fixed-window", "f", 5, 10)
    moving = store.table("moving-window", "m", 5, 10)
    sliding = store.table("sliding-window-counter", "s", 5, 10)
    for i in range(20):
        store.fixed_window(fixed, f"f{i}", 5, 10, T0)
        store.moving_window(moving, f"m{i}", 5, 10, T0)
        store.sliding_window_counter(sliding, f"s{i}", 5, 10, T0)
    assert len(store) == 60
    for i in range(20):  # past every window (a sliding count lives two): one key of one table
        store.fixed_window(fixed, "other", 5, 10, T0 + 30 + i)
        assert len(store) >= 61 - MemoryStore.SWEEP * (i + 1)  # bounded work per hit
    assert store.keys() == {"other"}
    assert len(store) == 1


def test_eviction_takes_the_key_nearest_its_deadline_across_tables() -> None:
    """Past max_keys the key whose window ends first goes, whatever its table and queue order."""
    store = MemoryStore(max_keys=4)
    told: list[int] = []
    store.on_evict = told.append
    hour = store.table("fixed-window", "hour", 5, 3600)
    minute = store.table("fixed-window", "minute", 5, 60)
    store.fixed_window(hour, "h1", 5, 3600, T0)
    store.fixed_window(hour, "h2", 5, 3600, T0 + 1)
    store.fixed_window(minute, "m1", 5, 60, T0 + 2)
    store.fixed_window(minute, "m2", 5, 60, T0 + 3)
    store.fixed_window(hour, "h3", 5, 3600, T0 + 4)
    assert store.keys() == {"h1", "h2", "m2", "h3"}  # m1 came after h1 and h2, ends first
    store.fixed_window(hour, "h4", 5, 3600, T0 + 5)
    assert store.keys() == {"h1", "h2", "h3", "h4"}
    assert store.evicted == 2 == sum(told)


def test_sliding_keys_count_once_and_the_previous_window_is_evicted_first() -> None:
    """A key counted in two windows is one key; past max_keys the previous window's go first."""
    store = MemoryStore(max_keys=3)
    table = store.table("sliding-window-counter", "s", 5, 60)
    window_start = (int(T0 / 60) + 1) * 60.0
    store.sliding_window_counter(table, "old", 5, 60, window_start - 1)
    for _ in range(3):
        store.sliding_window_counter(table, "a", 5, 60, window_start - 1)
    store.sliding_window_counter(table, "a", 5, 60, window_start + 1)  # counted in both windows
    store.sliding_window_counter(table, "b", 5, 60, window_start + 2)
    assert len(store) == 3 and store.evicted == 0
    store.sliding_window_counter(table, "c", 5, 60, window_start + 3)
    assert store.keys() == {"a", "b", "c"} and store.evicted == 1
    # "a" kept its previous window's 3 hits: floor(3 * 56/60 + 2) = 4 of 5 used.
    assert store.sliding_window_counter(table, "a", 5, 60, window_start + 4)[1] == 1


def test_sliding_key_count_follows_keys_through_window_moves() -> None:
    """Keys counted window after window, or left behind, are counted as the keys held."""
    store = MemoryStore()
    table = store.table("sliding-window-counter", "s", 100, 60)
    window_start = (int(T0 / 60) + 1) * 60.0
    for window in range(4):
        for key in ("a", "b") if window else ("a", "b", "c"):
            store.sliding_window_counter(table, key, 100, 60, window_start + 60 * window + 1)
    for i in range(3):  # the windows left behind are dropped a few entries per hit
        store.sliding_window_counter(table, "a", 100, 60, window_start + 182 + i)
    assert store.keys() == {"a", "b"}
    assert len(store) == 2


def test_a_key_hit_again_keeps_its_count_when_its_queue_entry_comes_up() -> None:
    """A key renewed after it was queued is requeued with its count; idle keys behind it go."""
    store = MemoryStore()
    table = store.table("fixed-window", "r", 3, 60)
    store.fixed_window(table, "hot", 3, 60, T0)
    for i in range(5):
        store.fixed_window(table, f"idle{i}", 3, 60, T0 + 1)
    store.fixed_window(table, "hot", 3, 60, T0 + 61)  # a second window: T0+61 to T0+121
    store.fixed_window(table, "hot", 3, 60, T0 + 62)
    for i in range(3):  # the first slice is due: "hot" is requeued, the idle keys dropped
        store.fixed_window(table, "new", 3, 60, T0 + 70 + i)
    assert store.keys() == {"hot", "new"}
    assert store.fixed_window(table, "hot", 3, 60, T0 + 80) == (True, 0, T0 + 121)
    assert store.fixed_window(table, "hot", 3, 60, T0 + 81)[0] is False
