"""Charging a key to a rule's limits: one call per limit in memory, bounded calls to a remote storage.

Each decision answers ``(rule, limit, remaining, reset_seconds)``: the rule and limit that
rejected (remaining 0), or ``(None, tightest_limit, remaining, reset)`` when allowed (stats
only when asked for). A remote decision is bounded by one time budget and raises
``StorageDown`` past it (see ``ratelimit_storage``). Over Redis a decision (or a peek) is
one Lua script call (``ratelimit_redis``); other remote storages take a ``hit`` and a
``get_window_stats`` per limit through ``limits.aio``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from buttress.ratelimit_memory import CounterTable, MemoryStore
from buttress.ratelimit_redis import ScriptDecider, script_client
from buttress.ratelimit_rules import Limit, Rule
from buttress.ratelimit_storage import Limiter, StorageDown, retry_within

__all__ = ["Decider", "Outcome", "Plan"]


def _expire(task: asyncio.Task[Any], expired: list[bool]) -> None:
    expired[0] = True
    task.cancel()


Plan = tuple[tuple[Rule, Limit, CounterTable], ...]
Outcome = tuple["Rule | None", "Limit | None", int, int]


class Decider:
    """The storage side of the rate limiter: memory counters, a Redis script or ``limits.aio``.

    ``script=False`` decides over Redis through ``limits.aio`` too (the reference the
    script is tested against).
    """

    def __init__(self, storage: Any, strategy: str, budget: float, *, script: bool = True) -> None:
        self.strategy = strategy
        self.budget = budget
        self.memory: MemoryStore | None = storage if isinstance(storage, MemoryStore) else None
        self.limiter: Limiter | None = None
        self.script: ScriptDecider | None = None
        if self.memory is not None:
            self._hit: Callable[..., tuple[bool, int, float]] = getattr(
                self.memory, strategy.replace("-", "_")
            )
        else:
            self.limiter = Limiter(storage, strategy, budget)
            found = script_client(storage) if script else None
            if found is not None:
                self.script = ScriptDecider(*found, strategy)
                self._errors = self.limiter.errors + self.script.errors

    def plan(self, pairs: Iterable[tuple[Rule, Limit]]) -> Plan:
        """Every ``(rule, limit)`` with its counters in the memory store."""
        assert self.memory is not None
        table = self.memory.table
        return tuple(
            (rule, limit, table(self.strategy, rule.name, limit.n, limit.expiry))
            for rule, limit in pairs
        )

    async def decide(
        self, pairs: Iterable[tuple[Rule, Limit]], key: str, *, want_stats: bool, cost: int = 1
    ) -> Outcome:
        """Charge ``key`` to every ``(rule, limit)``, in memory or remotely within the budget."""
        if self.memory is not None:
            return self.decide_memory(self.plan(pairs), key, want_stats, cost)
        script = self.script
        if script is not None:  # one script call (see ratelimit_redis)
            if not isinstance(pairs, list | tuple):
                pairs = tuple(pairs)  # a retry walks them again
            outcome: Outcome = await self._within_budget(
                script.decide, pairs, key, want_stats, cost
            )
            return outcome
        try:
            return await asyncio.wait_for(
                self._decide_remote(tuple(pairs), key, want_stats, cost), self.budget
            )
        except asyncio.TimeoutError:
            raise StorageDown(f"no answer within {self.budget * 1000:g} ms") from None

    async def warm(self) -> bool:
        """Connect to a Redis storage and load its script (call it at startup); False if down.

        Not bounded by the decision budget: a cluster client takes longer than one to learn
        its slots. Other storages have nothing to warm (True).
        """
        if self.script is None:
            return True
        try:
            await self.script.warm()
        except self._errors:
            return False
        return True

    async def _within_budget(self, func: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """``await func(*args)``, retrying storage errors, cut off at the budget (``StorageDown``).

        What ``asyncio.wait_for`` does, without its task per call (before Python 3.12) or
        ``asyncio.timeout``'s context object: one timer that cancels this task.
        """
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        expired = [False]
        timer = loop.call_at(loop.time() + self.budget, _expire, task, expired)
        try:
            try:
                return await func(*args)
            except self._errors:
                return await retry_within(func, self.budget, self._errors, *args)
        except asyncio.CancelledError:
            # Ours when the timer fired and nobody else cancelled the task too.
            uncancel = getattr(task, "uncancel", None)  # Python 3.11+
            if expired[0] and (uncancel is None or uncancel() == 0):
                raise StorageDown(f"no answer within {self.budget * 1000:g} ms") from None
            raise
        finally:
            timer.cancel()

    def decide_memory(self, plan: Plan, key: str, want_stats: bool, cost: int = 1) -> Outcome:
        """``decide`` over the memory store: one call per limit answers hit and stats."""
        now = time.time()
        hit = self._hit
        best: Limit | None = None
        best_remaining, best_reset = 1 << 62, 0.0
        for rule, limit, table in plan:
            allowed, remaining, reset = hit(table, key, limit.n, limit.expiry, now, cost)
            if not allowed:
                return rule, limit, 0, max(1, math.ceil(reset - now))
            if remaining < best_remaining:
                best, best_remaining, best_reset = limit, remaining, reset
        if not want_stats or best is None:
            return None, None, 0, 0
        return None, best, best_remaining, max(0, math.ceil(best_reset - now))

    async def _decide_remote(
        self, pairs: tuple[tuple[Rule, Limit], ...], key: str, want_stats: bool, cost: int
    ) -> Outcome:
        limiter = self.limiter
        assert limiter is not None
        for rule, limit in pairs:
            if not await limiter.call("hit", limit.item, rule.name, key, cost=cost):
                stats = await limiter.call("get_window_stats", limit.item, rule.name, key)
                return rule, limit, 0, max(1, math.ceil(float(stats.reset_time) - time.time()))
        if not want_stats:
            return None, None, 0, 0
        best: tuple[Limit | None, int, float] = (None, 1 << 62, 0.0)
        for rule, limit in pairs:
            stats = await limiter.call("get_window_stats", limit.item, rule.name, key)
            if int(stats.remaining) < best[1]:
                best = (limit, int(stats.remaining), float(stats.reset_time))
        return None, best[0], best[1], max(0, math.ceil(best[2] - time.time()))

    async def peek(
        self, pairs: Iterable[tuple[Rule, Limit]], key: str, cost: int = 1
    ) -> tuple[Rule, Limit, int] | None:
        """The ``(rule, limit, reset_seconds)`` that would refuse a hit now, changing nothing."""
        pairs = tuple(pairs)
        if self.memory is not None:
            now = time.time()
            for rule, limit, table in self.plan(pairs):
                if not self.memory.peek(
                    self.strategy, table, key, limit.n, limit.expiry, now, cost
                ):
                    return rule, limit, max(1, math.ceil(self.memory.retry_in(table, key, now)))
            return None
        script = self.script
        if script is not None:
            refused: tuple[Rule, Limit, int] | None = await self._within_budget(
                script.peek, pairs, key, cost
            )
            return refused
        try:
            return await asyncio.wait_for(self._peek_remote(pairs, key, cost), self.budget)
        except asyncio.TimeoutError:
            raise StorageDown(f"no answer within {self.budget * 1000:g} ms") from None

    async def _peek_remote(
        self, pairs: tuple[tuple[Rule, Limit], ...], key: str, cost: int
    ) -> tuple[Rule, Limit, int] | None:
        limiter = self.limiter
        assert limiter is not None
        for rule, limit in pairs:
            if not await limiter.call("test", limit.item, rule.name, key, cost=cost):
                stats = await limiter.call("get_window_stats", limit.item, rule.name, key)
                return rule, limit, max(1, math.ceil(float(stats.reset_time) - time.time()))
        return None
