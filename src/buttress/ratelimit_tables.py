"""Where ``memory://`` counters live, and how they are dropped: bounded work per hit, no timer.

# Strategy: a flood of one-shot client keys (random API keys, rotating addresses) is what
# fills the store, so a key should cost little more than its string and one dict entry,
# and dropping expired keys must cost each hit a bounded amount, with no thread or timer.
#
# - Sliding window counter: limits keeps one counter per key and window index, and the
#   window index is the same for every key (``now // expiry``). So a table keeps two
#   dicts, this window's counts and the previous window's, and moves on by swapping them:
#   no window index, deadline or queue entry per key. A key counted once holds an int (a
#   shared small int under 257); from its second hit, or carried over from the previous
#   window (it leaves that dict), ``[previous, current]``. The dict a move leaves behind
#   is emptied a few entries per hit, never all at once.
# - Fixed and moving window: a key's window starts at its first hit, so each key is queued
#   once, in a FIFO deque per table, and looked at one expiry after it was queued (the
#   expiry is constant per table, so the FIFO is in that order without a heap): by then a
#   key not hit since has expired and is dropped; a key hit since goes back to the tail.
#   Runs of keys are preceded by the end of the time slice they were queued in (a float,
#   1/SLICES of the expiry), so the front run is known to be due without looking its keys
#   up: a key is dropped at most one slice after its deadline, or, hit after it was queued,
#   up to one expiry after. A fixed-window key hit once holds its reset time alone (one
#   float); ``[reset, count]`` from its second hit.
#
# A hit compares ``now`` with the earliest due time over every table (``_next``). Past
# it, the hit looks at each table (one per rule and limit: a few), drops at most SWEEP
# entries, requeues live keys and moves ended windows on. A clock stepping back only
# delays a sweep, and keeps sliding counts in the newest window rather than forgiving them.
"""

from __future__ import annotations

from collections import deque
from math import inf
from typing import Any

__all__ = ["FIXED", "SLIDING", "CounterTable", "Tables"]

FIXED, SLIDING = "fixed-window", "sliding-window-counter"


class CounterTable:
    """The counters of one limit of one rule, and what the store needs to drop them."""

    def __init__(self, mode: str, expiry: int) -> None:
        self.mode = mode
        self.expiry = expiry
        #: Fixed and moving window: client key -> state. Sliding window: this window's counts.
        self.counters: dict[str, Any] = {}
        #: Sliding window: the previous window's counts of the keys not counted in this one
        #: yet (a key moves to ``counters`` with its previous count), and this window's index.
        self.previous: dict[str, Any] = {}
        self.window = -1
        #: Fixed and moving window: every key once, oldest first, each run of keys queued
        #: in one time slice preceded by the slice's end (a float; keys are strings).
        self.queue: deque[str | float] = deque()
        self.slice = expiry / Tables.SLICES
        self.opened = -inf  # the end of the slice being filled
        #: When the table next needs a look: its front run of keys is due, or its window ends.
        self.due = inf


class Tables:
    """Every counter table of a store, its key count and its bounded sweeping."""

    __slots__ = (
        "_count",
        "_garbage",
        "_ids",
        "_next",
        "_tables",
        "evicted",
        "max_keys",
        "on_evict",
    )

    #: Entries dropped per hit at most (bounds the work any one request does).
    SWEEP = 4
    #: Time slices per expiry (see the module's strategy).
    SLICES = 16

    def __init__(self, max_keys: int = 200_000) -> None:
        self._tables: list[CounterTable] = []
        self._ids: dict[tuple[str, str, int, int], CounterTable] = {}
        self._garbage: list[dict[str, Any]] = []  # the counts of sliding windows that ended
        self._next = inf  # no table is due before this time
        self._count = 0  # (table, key) pairs with a counter (not those in ``_garbage``)
        #: Most keys kept over every table; past it the ones nearest expiry are evicted.
        self.max_keys = max_keys
        #: Keys evicted before their window ended; ``on_evict`` is told of each (a metric).
        self.evicted = 0
        self.on_evict: Any = None

    def table(self, mode: str, name: str, amount: int, expiry: int) -> CounterTable:
        """The counters of one limit of one rule (created on first use)."""
        ident = (mode, name, amount, expiry)
        table = self._ids.get(ident)
        if table is None:
            table = self._ids[ident] = CounterTable(mode, expiry)
            self._tables.append(table)
        return table

    def __len__(self) -> int:
        """How many counters are held, over every table (of ended windows too, until dropped)."""
        return self._count + sum(len(dropped) for dropped in self._garbage)

    def keys(self) -> set[str]:
        """Every client key that has a counter."""
        found: set[str] = set()
        for table in self._tables:
            found.update(table.counters, table.previous)
        return found

    def reset(self) -> None:
        """Forget every counter."""
        for table in self._tables:
            table.counters, table.previous, table.window = {}, {}, -1
            table.queue.clear()
            table.due, table.opened = inf, -inf
        self._garbage.clear()
        self._count, self._next = 0, inf

    def _open(self, table: CounterTable, now: float) -> None:
        """Start a time slice in ``table``'s queue, for the keys queued from ``now`` on."""
        end = table.opened = now + table.slice
        queue = table.queue
        if not queue:
            due = table.due = end + table.expiry
            if due < self._next:
                self._next = due
        queue.append(end)

    def _roll(self, table: CounterTable, window: int) -> None:
        """Move a sliding-window table on to ``window``; the counts it leaves are garbage."""
        if window > table.window:
            garbage = self._garbage
            if table.previous:
                garbage.append(table.previous)
                self._count -= len(table.previous)
            if window == table.window + 1:
                table.previous = table.counters
            else:
                if table.counters:
                    garbage.append(table.counters)
                    self._count -= len(table.counters)
                table.previous = {}
            table.counters = {}
            table.window = window
            if garbage:
                self._next = -inf
        due = table.due = (table.window + 1) * table.expiry
        if due < self._next:
            self._next = due

    @staticmethod
    def _expired(table: CounterTable, state: Any, now: float) -> bool:
        """Whether a fixed- or moving-window state no longer counts at ``now``."""
        if table.mode == FIXED:
            return bool((state if type(state) is float else state[0]) <= now)
        return not state or state[-1] < now - table.expiry

    def sweep(self, now: float) -> None:
        """Drop up to ``SWEEP`` expired entries, requeue live keys, move ended windows on."""
        budget = self.SWEEP
        garbage = self._garbage
        while budget and garbage:
            dropped = garbage[-1]
            if dropped:
                dropped.popitem()
                budget -= 1
            else:
                garbage.pop()
        soonest = inf
        for table in self._tables:
            if table.due <= now and budget:
                if table.mode == SLIDING:
                    self._roll(table, int(now / table.expiry))
                else:
                    budget = self._sweep_queue(table, now, budget)
            if table.due < soonest:
                soonest = table.due
        self._next = -inf if garbage else soonest

    def _sweep_queue(self, table: CounterTable, now: float, budget: int) -> int:
        queue, counters, expiry = table.queue, table.counters, table.expiry
        due = table.due
        while budget and due <= now:
            if not queue:
                due = inf
                break
            key = queue[0]
            if isinstance(key, float):  # the next run of keys is due at its slice's end + expiry
                due = key + expiry
                if due <= now:
                    queue.popleft()
                continue
            queue.popleft()
            budget -= 1
            if self._expired(table, counters[key], now):
                del counters[key]
                self._count -= 1
            else:
                if now >= table.opened or not queue:
                    self._open(table, now)
                queue.append(key)
        table.due = due
        return budget

    def _admit(self, now: float) -> None:
        """Make room for one new key: past ``max_keys``, evict the entries nearest expiry.

        # Strategy: a flood of fresh keys must not grow memory without bound. The key that
        # goes is one of the table whose next keys expire soonest: a queue's front key, or
        # a key of a sliding table's previous window, then of its current one (the keys of
        # such a dict share one deadline, so the last, which pops in O(1)). One key per new
        # key, and only keys whose window had not ended count as evicted. The counts of
        # ended windows are dead already: sweeping drops them.
        """
        evicted = 0
        while self._count >= self.max_keys:
            nearest, soonest = None, inf
            for table in self._tables:
                if table.mode == SLIDING:
                    ahead = 1 if table.previous else 2 if table.counters else 0
                    due = (table.window + ahead) * table.expiry if ahead else inf
                else:
                    due = table.due if table.counters else inf
                if due < soonest:
                    nearest, soonest = table, due
            if nearest is None:
                break  # nothing left to evict (max_keys below 1)
            self._count -= 1
            if nearest.mode == SLIDING:
                (nearest.previous or nearest.counters).popitem()
                evicted += soonest > now
                continue
            queue = nearest.queue
            front = queue.popleft()
            while isinstance(front, float):
                nearest.due = front + nearest.expiry
                front = queue.popleft()
            evicted += not self._expired(nearest, nearest.counters.pop(front), now)
            if not queue:
                nearest.due = inf
        self.evicted += evicted
        if evicted and self.on_evict is not None:
            self.on_evict(evicted)
