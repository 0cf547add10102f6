"""``memory://`` rate-limit counters: limits' three strategies as a few dict and list operations.

Checked hit by hit against ``limits``' own MemoryStorage and strategies by a Hypothesis
test (tests/test_ratelimit_memory.py), so the arithmetic is the library's.
"""

from __future__ import annotations

from collections import deque
from math import floor

from buttress.ratelimit_tables import FIXED, SLIDING, CounterTable, Tables

__all__ = ["CounterTable", "MemoryStore"]


class MemoryStore(Tables):
    """Counters for ``memory://``: limits' three strategies as a few dict and list operations.

    # Strategy: limits' MemoryStorage and strategies cost about 20 µs per allowed request
    # (hit, then window stats, each building string keys and taking a lock); here one call
    # answers allowed, remaining and reset with limits' exact arithmetic. Counters live in
    # one ``CounterTable`` per (strategy, rule, limit), keyed by the client key itself: no
    # key string is built per request. How they are laid out, and dropped without a thread
    # or a timer, is ``ratelimit_tables``' strategy.
    """

    __slots__ = ()

    # Each strategy: ``(allowed, remaining, reset_at)`` for one hit of ``key`` at ``now``
    # costing ``cost``, with limits' arithmetic (``limits.strategies`` over
    # ``limits.storage.MemoryStorage``).

    def fixed_window(
        self, table: CounterTable, key: str, amount: int, expiry: int, now: float, cost: int = 1
    ) -> tuple[bool, int, float]:
        """A counter that restarts ``expiry`` seconds after the first hit of its window."""
        if now >= self._next:
            self.sweep(now)
        counters = table.counters
        state = counters.get(key)
        if state is None:
            if self._count >= self.max_keys:
                self._admit(now)
            self._count += 1
            reset = now + expiry
            counters[key] = reset if cost == 1 else [reset, cost]
            queue = table.queue
            if now >= table.opened or not queue:
                self._open(table, now)
            queue.append(key)
            count = cost
        elif type(state) is list:
            if state[0] <= now:
                reset = state[0] = now + expiry
                count = state[1] = cost
            else:
                reset = state[0]
                count = state[1] = state[1] + cost  # limits counts rejected hits too
        elif state <= now:  # a float: the reset of a window hit once
            reset = now + expiry
            counters[key] = reset if cost == 1 else [reset, cost]
            count = cost
        else:
            reset = state
            count = 1 + cost
            counters[key] = [reset, count]
        return count <= amount, amount - count if count < amount else 0, reset

    def sliding_window_counter(
        self, table: CounterTable, key: str, amount: int, expiry: int, now: float, cost: int = 1
    ) -> tuple[bool, int, float]:
        """The current window's count plus the previous one's, weighted by its overlap."""
        if now >= self._next:
            self.sweep(now)
        # ``x % 1`` of a positive float is exactly ``x - int(x)``: limits' formulas below,
        # without three slow ``fmod`` calls.
        scaled = now / expiry
        window = int(scaled)
        if window != table.window:
            self._roll(table, window)
        # A count is an int while the key was counted once and not in the previous window
        # (the one-shot keys that fill memory), else ``[previous, current]``.
        counters = table.counters
        state = counters.get(key)
        before = None
        if state is None:  # not counted in this window yet
            before = table.previous.get(key)
            previous = 0 if before is None else before if type(before) is int else before[1]
            current = 0
        elif type(state) is list:
            previous, current = state
        else:
            previous, current = 0, state
        if not previous:
            allowed = current + cost <= amount
            if allowed:
                current += cost
                if state is None:
                    if before is not None:  # counted already, now in this window
                        del table.previous[key]
                    else:
                        if self._count >= self.max_keys:
                            self._admit(now)
                        self._count += 1
                    counters[key] = current
                elif type(state) is list:
                    state[1] = current
                else:
                    counters[key] = [0, current]
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
            current += cost
            if state is None:  # counted already, now in this window with its previous count
                del table.previous[key]
                counters[key] = [previous, current]
            else:
                state[1] = current
        remaining = amount - floor(weight + current)
        reset_in = previous_ttl % (expiry / previous)
        if current:
            scaled = now / expiry
            current_in = ((1 - (scaled - window)) * expiry + expiry) % expiry
            if current_in < reset_in:
                reset_in = current_in
        return allowed, remaining if remaining > 0 else 0, now + reset_in

    def moving_window(
        self, table: CounterTable, key: str, amount: int, expiry: int, now: float, cost: int = 1
    ) -> tuple[bool, int, float]:
        """At most ``amount`` acquisitions in any ``expiry`` seconds."""
        if now >= self._next:
            self.sweep(now)
        cutoff = now - expiry
        counters = table.counters
        times = counters.get(key)
        if times is None:
            if self._count >= self.max_keys:
                self._admit(now)
            self._count += 1
            times = counters[key] = [] if amount <= 256 else deque()
            queue = table.queue
            if now >= table.opened or not queue:
                self._open(table, now)
            queue.append(key)
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

    def _counts(self, table: CounterTable, key: str, window: int) -> tuple[int, int]:
        """A sliding-window key's previous and current counts in ``window``, changing nothing."""
        if window > table.window + 1:
            return 0, 0
        state = table.counters.get(key)
        if window == table.window + 1:  # the table has not moved on yet
            return (0 if state is None else state if type(state) is int else state[1]), 0
        if state is None:
            before = table.previous.get(key)
            return (0 if before is None else before if type(before) is int else before[1]), 0
        if type(state) is int:
            return 0, state
        return state[0], state[1]

    def peek(
        self,
        mode: str,
        table: CounterTable,
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
        if mode == SLIDING:
            previous, current = self._counts(table, key, int(now / expiry))
            if not previous:
                return current + cost <= amount
            scaled = (now - expiry) / expiry
            previous_ttl = (1 - (scaled - int(scaled))) * expiry
            return bool(floor(previous * previous_ttl / expiry + current) + cost <= amount)
        state = table.counters.get(key)
        if state is None:
            return cost <= amount
        if mode == FIXED:
            if type(state) is float:
                return (0 if state <= now else 1) + cost <= amount
            used: int = 0 if state[0] <= now else state[1]
            return used + cost <= amount
        cutoff = now - expiry  # limits' test() counts entries strictly inside
        inside: int = sum(1 for t in state if t > cutoff)
        return inside + cost <= amount

    def retry_in(self, table: CounterTable, key: str, now: float) -> float:
        """Seconds until a key refused now may pass again: its window's end at the latest."""
        expiry = table.expiry
        if table.mode != SLIDING:
            state = table.counters.get(key)
            if table.mode == FIXED and state:
                return float(state if type(state) is float else state[0]) - now
            if state:
                for t in state:
                    if t > now - expiry:
                        return float(t) + expiry - now
        return expiry - now % expiry
