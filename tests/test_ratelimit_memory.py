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
            table, tid = store.table(strategy, "r", item.amount, item.get_expiry())
            hit = getattr(store, strategy.replace("-", "_"))
            reference = limits_reference(strategy)
            for advance, key, cost in ops:
                clock.advance(advance)
                peeked = store.peek(
                    strategy, table, key, item.amount, item.get_expiry(), clock.now, cost
                )
                assert peeked == reference.test(item, "r", key, cost=cost)
                allowed, _, _ = hit(
                    table, tid, key, item.amount, item.get_expiry(), clock.now, cost
                )
                assert allowed == reference.hit(item, "r", key, cost=cost)

    check()


def test_store_keeps_at_most_max_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past max_keys the keys nearest their deadline are evicted, counted and reported."""
    clock = FakeClock(1_800_000_000.25)
    monkeypatch.setattr(time, "time", clock)
    told: list[int] = []
    store = MemoryStore(max_keys=100)
    store.on_evict = told.append
    table, tid = store.table("fixed-window", "r", 5, 60)
    for i in range(250):
        clock.now += 0.01
        store.fixed_window(table, tid, f"k{i}", 5, 60, clock.now)
    assert len(store) == 100
    assert store.evicted == 150 == sum(told)
    assert "k0" not in table and "k249" in table  # the oldest windows went first
