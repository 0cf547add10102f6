"""``memory://`` rate-limit counters: limits' three strategies as a few dict and list operations.

Checked hit by hit against ``limits``' own MemoryStorage and strategies by a Hypothesis
test (tests/test_ratelimit_memory.py), so the arithmetic is the library's.
"""

from __future__ import annotations

from collections import deque
from heapq import heappop, heappush
from math import floor
from typing import Any

__all__ = ["MemoryStore"]


class MemoryStore:
    """Counters for ``memory://``: limits' three strategies as a few dict and list operations.

    # Strategy: limits' MemoryStorage and strategies cost about 20 µs per allowed request
    # (hit, then window stats, each building string keys and taking a lock); here one call
    # answers allowed, remaining and reset with limits' exact arithmetic. Counters live in
    # one dict per (strategy, rule, limit), keyed by the client key itself: no key string is
    # built per request. Memory stays bounded without a thread or a timer: every key gets one
    # entry in a heap of (deadline, table, key) when it is created, and every hit drops at
    # most a few keys whose deadline has passed (a key still in use is pushed back with its
    # new deadline).

    Per key: fixed-window ``[reset_at, count]``; sliding-window-counter
    ``[window_index, previous_count, current_count]``; moving-window the acquisition times
    of the last ``amount`` entries, oldest first (a list, or a deque for large amounts).
    """

    __slots__ = ("_heap", "_ids", "_tables", "evicted", "max_keys", "on_evict")

    #: Expired keys dropped per hit at most (bounds the work any one request does).
    SWEEP = 4

    def __init__(self, max_keys: int = 200_000) -> None:
        self._heap: list[tuple[float, int, str]] = []
        self._tables: list[tuple[dict[str, Any], str, int]] = []
        self._ids: dict[tuple[str, str, int, int], int] = {}
        #: Most keys kept over every table; past it the key nearest its deadline is evicted.
        self.max_keys = max_keys
        #: Keys evicted to stay under ``max_keys``; ``on_evict`` is told of each (a metric).
        self.evicted = 0
        self.on_evict: Any = None

    def table(self, mode: str, name: str, amount: int, expiry: int) -> tuple[dict[str, Any], int]:
        """The counters of one limit of one rule (created on first use) and their table id."""
        ident = (mode, name, amount, expiry)
        tid = self._ids.get(ident)
        if tid is None:
            tid = self._ids[ident] = len(self._tables)
            self._tables.append(({}, mode, expiry))
        return self._tables[tid][0], tid

    def __len__(self) -> int:
        """How many keys are stored, over every table."""
        return sum(len(table) for table, _, _ in self._tables)

    def reset(self) -> None:
        """Forget every counter."""
        self._heap.clear()
        for table, _, _ in self._tables:
            table.clear()

    def _admit(self) -> None:
        """Make room for one new key: past ``max_keys``, evict the entries nearest expiry.

        # Strategy: a flood of fresh keys (random API keys, rotating IPv6 addresses) must
        # not grow memory without bound. Every key has one heap entry, so the heap's size
        # is the key count; the heap's first entry is the key whose window ends soonest,
        # the one whose eviction forgives the least. Each eviction is counted.
        """
        heap = self._heap
        evicted = 0
        while len(heap) >= self.max_keys:
            _, tid, key = heappop(heap)
            if self._tables[tid][0].pop(key, None) is not None:
                evicted += 1
        self.evicted += evicted
        if evicted and self.on_evict is not None:
            self.on_evict(evicted)

    def sweep(self, now: float) -> None:
        """Drop up to ``SWEEP`` keys whose window has passed; push live ones back."""
        heap = self._heap
        tables = self._tables
        budget = self.SWEEP
        while budget and heap and heap[0][0] <= now:
            budget -= 1
            _, tid, key = heappop(heap)
            table, mode, expiry = tables[tid]
            state = table.get(key)
            if state is None:
                continue
            if mode == "fixed-window":
                deadline = state[0]
                if deadline <= now:
                    del table[key]
                    continue
            elif mode == "sliding-window-counter":
                if int(now / expiry) >= state[0] + 2:
                    del table[key]
                    continue
                deadline = (state[0] + 2) * expiry
            else:
                if not state or state[-1] < now - expiry:
                    del table[key]
                    continue
                deadline = state[-1] + expiry
            heappush(heap, (deadline, tid, key))

    # Each strategy: ``(allowed, remaining, reset_at)`` for one hit of ``key`` at ``now``
    # costing ``cost``, with limits' arithmetic (``limits.strategies`` over
    # ``limits.storage.MemoryStorage``).

    def fixed_window(
        self,
        table: dict[str, Any],
        tid: int,
        key: str,
        amount: int,
        expiry: int,
        now: float,
        cost: int = 1,
    ) -> tuple[bool, int, float]:
        """A counter that restarts ``expiry`` seconds after the first hit of its window."""
        heap = self._heap
        if heap and heap[0][0] <= now:
            self.sweep(now)
        state = table.get(key)
        if state is None:
            if len(heap) >= self.max_keys:
                self._admit()
            reset = now + expiry
            table[key] = [reset, cost]
            heappush(heap, (reset, tid, key))
            count = cost
        elif state[0] <= now:
            reset = state[0] = now + expiry
            count = state[1] = cost
        else:
            reset = state[0]
            count = state[1] = state[1] + cost  # limits counts rejected hits too
        return count <= amount, amount - count if count < amount else 0, reset

    def sliding_window_counter(
        self,
        table: dict[str, Any],
        tid: int,
        key: str,
        amount: int,
        expiry: int,
        now: float,
        cost: int = 1,
    ) -> tuple[bool, int, float]:
        """The current window's count plus the previous one's, weighted by its overlap."""
        heap = self._heap
        if heap and heap[0][0] <= now:
            self.sweep(now)
        # ``x % 1`` of a positive float is exactly ``x - int(x)``: limits' formulas below,
        # without three slow ``fmod`` calls.
        scaled = now / expiry
        window = int(scaled)
        state = table.get(key)
        if state is None:
            if len(heap) >= self.max_keys:
                self._admit()
            state = table[key] = [window, 0, 0]
            heappush(heap, ((window + 2) * expiry, tid, key))
        elif state[0] != window:
            state[1] = state[2] if state[0] == window - 1 else 0
            state[2] = 0
            state[0] = window
        previous, current = state[1], state[2]
        if not previous:
            allowed = current + cost <= amount
            if allowed:
                current = state[2] = current + cost
            elif not current:
                return False, 0, now
            remaining = amount - current if current < amount else 0
            reset_in = ((1 - (scaled - window)) * expiry + expiry) % expiry
            return allowed, remaining, now + reset_in
        scaled = (now - expiry) / expiry
        previous_ttl = (1 - (scaled - int(scaled))) * expiry
        weight = previous * previous_ttl / expiry
        allowed = floor(weight + current) + cost <= amount
        if allowed:
            current = state[2] = current + cost
        remaining = amount - floor(weight + current)
        reset_in = previous_ttl % (expiry / previous)
        if current:
            scaled = now / expiry
            current_in = ((1 - (scaled - window)) * expiry + expiry) % expiry
            if current_in < reset_in:
                reset_in = current_in
        return allowed, remaining if remaining > 0 else 0, now + reset_in

    def moving_window(
        self,
        table: dict[str, Any],
        tid: int,
        key: str,
        amount: int,
        expiry: int,
        now: float,
        cost: int = 1,
    ) -> tuple[bool, int, float]:
        """At most ``amount`` acquisitions in any ``expiry`` seconds."""
        heap = self._heap
        if heap and heap[0][0] <= now:
            self.sweep(now)
        cutoff = now - expiry
        times = table.get(key)
        if times is None:
            if len(heap) >= self.max_keys:
                self._admit()
            times = table[key] = [] if amount <= 256 else deque()
            heappush(heap, (now + expiry, tid, key))
        while times and times[0] < cutoff:  # out of every future window
            del times[0]
        allowed = len(times) + cost <= amount  # else the amount-th newest is still in the window
        if allowed:
            times.extend([now] * cost)
        count, first = len(times), 0
        while first < count and times[first] <= cutoff:
            first += 1
        if first == count:
            return allowed, amount, now
        return allowed, amount - (count - first), times[first] + expiry

    def peek(
        self,
        mode: str,
        table: dict[str, Any],
        key: str,
        amount: int,
        expiry: int,
        now: float,
        cost: int = 1,
    ) -> bool:
        """Whether a hit costing ``cost`` would be allowed now, changing nothing.

        For limits counted after the response (``count="failures"``): the request is
        refused up front when it could not be counted, and charged once its status is known.
        """
        state = table.get(key)
        if state is None:
            return cost <= amount
        if mode == "fixed-window":
            used: int = 0 if state[0] <= now else state[1]
            return used + cost <= amount
        if mode == "moving-window":  # limits' test() counts entries strictly inside
            cutoff = now - expiry
            inside: int = sum(1 for t in state if t > cutoff)
            return inside + cost <= amount
        window = int(now / expiry)
        if state[0] == window:
            previous, current = state[1], state[2]
        else:
            previous, current = (state[2] if state[0] == window - 1 else 0), 0
        if not previous:
            return bool(current + cost <= amount)
        scaled = (now - expiry) / expiry
        previous_ttl = (1 - (scaled - int(scaled))) * expiry
        return bool(floor(previous * previous_ttl / expiry + current) + cost <= amount)
