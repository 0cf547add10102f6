"""Redis decisions in one round trip: a Lua script hits every limit of a rule and answers its window.

# Strategy: one script per strategy (``ratelimit_scripts``), run with EVALSHA packed here
# and sent on a redis-py connection kept between decisions (taken from the pool once;
# hiredis parses the reply when it is installed; no socket timeout, the decision budget
# cuts every call off). Cluster clients route it by slot themselves. The script does what
# limits' own Redis scripts do for ``hit``, ``test`` and ``get_window_stats``, in the
# order ``ratelimit_decide`` asks for them (limits are charged in turn and the first that
# refuses stops the rest), and returns the raw window state; the float arithmetic of the
# answer (remaining, reset) is limits' own, done here on that state. A decision that took
# a ``hit`` plus a ``get_window_stats`` per limit is now one call.
#
# Keys are limits' own (``<prefix>:LIMITER/<rule>/<key>/<amount>/<multiples>/<unit>``,
# the sliding window's pair in braces), so instances that still decide through
# ``limits.aio`` share the same counters during a rolling upgrade. On Redis Cluster the
# keys of one script must live in one hash slot: there the client key leads as a hash
# tag (``<prefix>:{<client key>}:LIMITER/...``), which puts every limit of one client in
# one slot and spreads clients over the cluster.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final

from buttress.ratelimit_scripts import SCRIPTS, WIDTH

if TYPE_CHECKING:
    from buttress.ratelimit_rules import Limit, Rule

__all__ = ["ScriptDecider", "script_client"]


def _bulk(value: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


_MODES: Final = {mode: _bulk(mode.encode()) for mode in "hsp"}


def script_client(storage: Any) -> tuple[Any, str, bool] | None:
    """``(redis-py client, key prefix, is_cluster)`` of a limits Redis storage, else None.

    Only limits' redis-py storages qualify (buttress builds them); memcached, coredis or
    valkey storages a user passed in keep deciding through ``limits.aio``.
    """
    module = type(storage).__module__
    bridge = getattr(storage, "bridge", None)
    if not module.startswith("limits.aio.storage.redis") or bridge is None:
        return None
    if type(bridge).__name__ != "RedispyBridge":
        return None
    from limits.aio.storage import RedisClusterStorage

    return bridge.storage, str(bridge.key_prefix), isinstance(storage, RedisClusterStorage)


class _Entry:
    """How one ``(rule, limit)`` names its keys, with its amount and expiry as sent."""

    __slots__ = (
        "amount",
        "args",
        "expiry",
        "head",
        "head_b",
        "limit",
        "n",
        "rule",
        "seconds",
        "tail",
        "tail_b",
    )

    def __init__(self, rule: Rule, limit: Limit, prefix: str, cluster: bool, sliding: bool) -> None:
        item = limit.item
        self.rule, self.limit = rule, limit
        self.n, self.seconds = limit.n, limit.expiry
        self.amount, self.expiry = str(limit.n), str(limit.expiry)
        self.args = _bulk(self.amount.encode()) + _bulk(self.expiry.encode())
        name = f"{item.namespace}/{rule.name}/"
        tail = f"/{item.amount}/{item.multiples}/{item.GRANULARITY.name}"
        if cluster:  # the client key leads as the hash tag; ``keys`` fills the rest in
            self.head, self.tail = f"{prefix}:{{", f"}}:{name}"
        elif sliding:  # limits' pair: "<prefix>:{<name>}/-1" and "<prefix>:{<name>}"
            self.head, self.tail = f"{prefix}:{{{name}", f"{tail}}}"
        else:
            self.head, self.tail = f"{prefix}:{name}", tail
        self.head_b, self.tail_b = self.head.encode(), self.tail.encode()

    def keys(self, key: str, cluster: bool, sliding: bool, item_tail: str) -> list[str]:
        """The key names, as text (the cluster client takes them so)."""
        if cluster:
            tag = key.replace("{", "").replace("}", "")
            name = self.head + tag + self.tail + key + item_tail
        else:
            name = self.head + key + self.tail
        return [name + "/-1", name] if sliding else [name]


class ScriptDecider:
    """Decisions and peeks over a Redis, one script call each (see the module docstring)."""

    #: (rule, limit) pairs whose key names are remembered; dropped whole when full.
    CACHE = 4096

    def __init__(self, client: Any, prefix: str, cluster: bool, strategy: str) -> None:
        import hashlib

        from redis.exceptions import NoScriptError, RedisError

        self.client = client
        self.prefix = prefix
        self.cluster = cluster
        self.strategy = strategy
        self.sliding = strategy == "sliding-window-counter"
        self.width = WIDTH[strategy]
        self.source = SCRIPTS[strategy]
        self.sha = hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()
        self._no_script = NoScriptError
        #: Errors that mean the storage is down for now (a failover: READONLY, LOADING...).
        self.errors: tuple[type[BaseException], ...] = (RedisError, OSError)
        self._entries: dict[tuple[Rule, Limit], _Entry] = {}
        self._pool = None if cluster else client.connection_pool
        self._ready: asyncio.Future[Any] | None = None
        #: Connections kept between decisions (taken from the pool once, not per call;
        #: closed with the pool by ``close_storage``).
        self._idle: list[Any] = []
        self._evalsha = _bulk(b"EVALSHA") + _bulk(self.sha.encode())
        self._eval = _bulk(b"EVAL") + _bulk(self.source.encode())

    def _entry(self, pair: tuple[Rule, Limit]) -> _Entry:
        entries = self._entries
        if len(entries) >= self.CACHE:
            entries.clear()
        entry = entries[pair] = _Entry(pair[0], pair[1], self.prefix, self.cluster, self.sliding)
        return entry

    def _keys(
        self, pairs: Iterable[tuple[Rule, Limit]], key: str
    ) -> tuple[list[_Entry], list[str]]:
        """The entries of ``pairs`` and the key names of ``key`` under them, as text."""
        out = [self._entries.get(pair) or self._entry(pair) for pair in pairs]
        keys: list[str] = []
        for entry in out:
            item = entry.limit.item
            tail = f"/{item.amount}/{item.multiples}/{item.GRANULARITY.name}"
            keys += entry.keys(key, self.cluster, self.sliding, tail)
        return out, keys

    def _pack(
        self, pairs: Iterable[tuple[Rule, Limit]], key: str, mode: str, cost: int, now: float
    ) -> tuple[list[_Entry], list[bytes]]:
        """The entries of ``pairs`` and the script's arguments, packed (RESP) in one go.

        redis-py's ``pack_command`` encodes argument by argument; here only the client
        key and the time are encoded per call, the rest was encoded once per entry.
        """
        entries = self._entries
        out = [entries.get(pair) or self._entry(pair) for pair in pairs]
        raw = key.encode()
        body: list[bytes] = []
        if self.sliding:
            for entry in out:
                name = entry.head_b + raw + entry.tail_b
                body += (b"$%d\r\n%s/-1\r\n" % (len(name) + 3, name), _bulk(name))
        else:
            body += [_bulk(entry.head_b + raw + entry.tail_b) for entry in out]
        nkeys = len(body)
        body += [entry.args for entry in out]
        body[nkeys:nkeys] = (_MODES[mode], _bulk(b"%d" % cost), _bulk(repr(now).encode()))
        return out, [b"*%d\r\n" % (6 + nkeys + 2 * len(out)), _bulk(b"%d" % nkeys), *body]

    async def _call(self, packed: list[bytes]) -> list[bytes]:
        """EVALSHA on a connection of our own; EVAL when the server lost the script."""
        idle = self._idle
        conn = idle.pop() if idle else await self._pool.get_connection()  # type: ignore[union-attr]
        try:
            # packed: the array header first, then the script and its arguments
            packed.insert(1, self._evalsha)
            await conn.send_packed_command(packed, False)
            try:
                reply = await conn.read_response()
            except self._no_script:  # a restarted or new server: EVAL loads it again
                packed[1] = self._eval
                await conn.send_packed_command(packed, False)
                reply = await conn.read_response()
        except BaseException:
            # Cancelled by the budget or failed mid-reply: the connection may hold half
            # an answer, so it goes back to the pool closed, never to the idle list.
            await conn.disconnect()
            await self._pool.release(conn)  # type: ignore[union-attr]
            raise
        idle.append(conn)
        return bytes(reply).split()

    async def _call_cluster(
        self, mode: str, pairs: Iterable[tuple[Rule, Limit]], key: str, cost: int, now: float
    ) -> tuple[list[_Entry], list[bytes]]:
        """The cluster client routes by slot (all keys share the client key's hash tag)."""
        await self._cluster_ready()
        entries, keys = self._keys(pairs, key)
        args: list[Any] = [len(keys), *keys, mode, cost, now]
        for entry in entries:
            args += (entry.amount, entry.expiry)
        try:
            reply = await self.client.execute_command("EVALSHA", self.sha, *args)
        except self._no_script:
            reply = await self.client.execute_command("EVAL", self.source, *args)
        return entries, bytes(reply).split()

    async def warm(self) -> None:
        """Connect and load the script now rather than on the first request.

        A cluster client learns the slots, so the first decisions do not fail open while it
        does; a plain one keeps the connection for the first decision.
        """
        if self._pool is None:
            await self._cluster_ready()
            await self.client.script_load(self.source)
            return
        conn = await self._pool.get_connection()
        try:
            await conn.send_command("SCRIPT", "LOAD", self.source)
            await conn.read_response()
        except BaseException:
            await conn.disconnect()
            await self._pool.release(conn)
            raise
        self._idle.append(conn)

    async def _cluster_ready(self) -> None:
        """Let the cluster client learn the slots, in a task the budget does not cancel.

        Learning the cluster takes longer than a decision's budget (about 100 ms at first):
        cut off each time, it would never finish and every decision would fail open.
        """
        ready = self._ready
        if ready is None or (ready.done() and (ready.cancelled() or ready.exception())):
            ready = self._ready = asyncio.ensure_future(self.client.initialize())
        if not ready.done():
            await asyncio.shield(ready)

    async def run(
        self, mode: str, pairs: Iterable[tuple[Rule, Limit]], key: str, cost: int, now: float
    ) -> tuple[list[_Entry], list[bytes]]:
        """The script's reply for ``pairs`` and ``key``, split into fields (see ``_HEAD``)."""
        if self._pool is None:
            return await self._call_cluster(mode, pairs, key, cost, now)
        entries, packed = self._pack(pairs, key, mode, cost, now)
        return entries, await self._call(packed)

    def decision(
        self, entries: list[_Entry], reply: list[bytes], want_stats: bool, now: float
    ) -> tuple[Rule | None, Limit | None, int, int]:
        """``Decider.decide``'s answer from the script's reply to a hit."""
        refused = int(reply[0])
        if refused:
            entry = entries[refused - 1]
            reset, _ = self.window(entry, reply, 1, now)
            return entry.rule, entry.limit, 0, max(1, math.ceil(reset - now))
        if not want_stats:
            return None, None, 0, 0
        best: Limit | None = None
        best_remaining, best_reset = 1 << 62, 0.0
        at = 1
        for entry in entries:
            reset, remaining = self.window(entry, reply, at, now)
            at += self.width
            if remaining < best_remaining:
                best, best_remaining, best_reset = entry.limit, remaining, reset
        return None, best, best_remaining, max(0, math.ceil(best_reset - now))

    def refusal(
        self, entries: list[_Entry], reply: list[bytes], now: float
    ) -> tuple[Rule, Limit, int] | None:
        """``Decider.peek``'s answer from the script's reply to a peek."""
        refused = int(reply[0])
        if not refused:
            return None
        entry = entries[refused - 1]
        reset, _ = self.window(entry, reply, 1, now)
        return entry.rule, entry.limit, max(1, math.ceil(reset - now))

    async def decide(
        self, pairs: Iterable[tuple[Rule, Limit]], key: str, want_stats: bool, cost: int = 1
    ) -> tuple[Rule | None, Limit | None, int, int]:
        """``Decider.decide`` over Redis: one script call hits every limit in turn."""
        now = time.time()
        entries, reply = await self.run("s" if want_stats else "h", pairs, key, cost, now)
        return self.decision(entries, reply, want_stats, now)

    async def peek(
        self, pairs: Iterable[tuple[Rule, Limit]], key: str, cost: int = 1
    ) -> tuple[Rule, Limit, int] | None:
        """``Decider.peek`` over Redis: limits' ``test`` of every limit in one script call."""
        now = time.time()
        entries, reply = await self.run("p", pairs, key, cost, now)
        return self.refusal(entries, reply, now)

    def window(self, entry: _Entry, reply: Sequence[Any], at: int, now: float) -> tuple[float, int]:
        """limits' ``get_window_stats`` of one window in the reply: (reset time, remaining)."""
        amount, expiry = entry.n, entry.seconds
        if self.strategy == "fixed-window":
            return max(int(reply[at + 1]), 0) + now, max(0, amount - int(reply[at]))
        if self.strategy == "moving-window":
            oldest = reply[at]
            if oldest == b"-":
                return now + expiry, amount
            return float(oldest) + expiry, amount - int(reply[at + 1])
        previous, current = int(reply[at]), int(reply[at + 2])
        previous_in = max(0.0, float(reply[at + 1])) / 1000
        current_in = max(0.0, float(reply[at + 3])) / 1000
        remaining = max(0, amount - math.floor(previous * previous_in / expiry + current))
        if not (previous or current):
            return now, remaining
        # limits reads these ttls in a second call, an instant after the hit; read in the
        # same instant, a window that just started is exactly a whole period away (0 by
        # the modulo): answer what limits answers, the whole period.
        previous_reset, current_reset = math.inf, math.inf
        if previous:
            period = expiry / previous
            previous_reset = previous_in % period or period
        if current:
            current_reset = current_in % expiry or float(expiry)
        return now + min(previous_reset, current_reset), remaining
