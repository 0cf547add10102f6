"""Redis decisions in one round trip: a Lua script hits every limit of a rule and answers its window.

# Strategy: one script per strategy, run with EVALSHA on a connection taken straight from
# the redis-py pool (hiredis parses the reply when it is installed). The script does what
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

import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from buttress.ratelimit_rules import Limit, Rule

__all__ = ["ScriptDecider", "script_client"]

# ARGV: mode ('h' hit, 's' hit and answer every window, 'p' peek), cost, now, then
# (amount, expiry) per limit. The reply: {refused index or 0, state of each window
# answered...}; a hit answers only the refused window, or every window in mode 's'.
_HEAD: Final = """
local mode, cost, now = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local out = {0}
"""

# Fixed window: limits' incr_expire.lua; a window is (count, ttl in seconds).
_FIXED: Final = (
    _HEAD
    + """
local function state(key)
  out[#out + 1] = tonumber(redis.call('get', key)) or 0
  out[#out + 1] = redis.call('ttl', key)
end
for i = 1, #KEYS do
  local limit, expiry = tonumber(ARGV[2 + 2 * i]), ARGV[3 + 2 * i]
  if mode == 'p' then
    if (tonumber(redis.call('get', KEYS[i])) or 0) >= limit - cost + 1 then
      out[1] = i
      state(KEYS[i])
      return out
    end
  else
    local current = redis.call('incrby', KEYS[i], cost)
    if current == cost then
      redis.call('expire', KEYS[i], expiry)
    end
    if current > limit then
      out[1] = i
      state(KEYS[i])
      return out
    end
  end
end
if mode == 's' then
  for i = 1, #KEYS do state(KEYS[i]) end
end
return out
"""
)

# Moving window: limits' acquire_moving_window.lua and moving_window.lua (a binary search
# for the oldest entry inside the window); a window is (oldest entry or '', count).
_MOVING: Final = (
    _HEAD
    + """
local function state(key, limit, expiry)
  local target = tonumber(now) - expiry
  local low, high, found = 0, limit - 1, nil
  while low <= high do
    local mid = math.floor((low + high) / 2)
    local val = tonumber(redis.call('lindex', key, mid))
    if val and val >= target then
      found = mid
      low = mid + 1
    else
      high = mid - 1
    end
  end
  if found then
    out[#out + 1] = tostring(tonumber(redis.call('lindex', key, found)))
    out[#out + 1] = found + 1
  else
    out[#out + 1] = ''
    out[#out + 1] = 0
  end
  return found and found + 1 or 0
end
for i = 1, #KEYS do
  local limit, expiry = tonumber(ARGV[2 + 2 * i]), tonumber(ARGV[3 + 2 * i])
  if mode == 'p' then
    local mark = #out
    if state(KEYS[i], limit, expiry) > limit - cost then
      out[1] = i
      return out
    end
    out[mark + 1], out[mark + 2] = nil, nil
  else
    local ok = cost <= limit
    if ok then
      local entry = redis.call('lindex', KEYS[i], limit - cost)
      ok = not (entry and tonumber(entry) >= tonumber(now) - expiry)
    end
    if not ok then
      out[1] = i
      state(KEYS[i], limit, expiry)
      return out
    end
    local entries = {}
    for j = 1, cost do entries[j] = now end
    for j = 1, #entries, 5000 do
      redis.call('lpush', KEYS[i], unpack(entries, j, math.min(j + 4999, #entries)))
    end
    redis.call('ltrim', KEYS[i], 0, limit - 1)
    redis.call('expire', KEYS[i], expiry)
  end
end
if mode == 's' then
  for i = 1, #KEYS do
    state(KEYS[i], tonumber(ARGV[2 + 2 * i]), tonumber(ARGV[3 + 2 * i]))
  end
end
return out
"""
)

# Sliding window counter: limits' acquire_sliding_window.lua and sliding_window.lua (both
# move an ended window to the previous key first); KEYS are (previous, current) per
# limit, a window is (previous count, its pttl, current count, its pttl), ttls in ms.
_SLIDING: Final = (
    _HEAD
    + """
local function shift(prev, cur, expiry)
  local ttl = tonumber(redis.call('pttl', cur))
  if ttl > 0 and ttl < expiry then
    redis.call('rename', cur, prev)
    redis.call('set', cur, 0, 'PX', ttl + expiry)
  end
end
local function state(prev, cur)
  local pc = tonumber(redis.call('get', prev)) or 0
  local pt = tonumber(redis.call('pttl', prev)) or 0
  local cc = tonumber(redis.call('get', cur)) or 0
  local ct = tonumber(redis.call('pttl', cur)) or 0
  out[#out + 1], out[#out + 2], out[#out + 3], out[#out + 4] = pc, pt, cc, ct
  return pc, math.max(pt, 0), cc
end
for i = 1, #KEYS / 2 do
  local prev, cur = KEYS[2 * i - 1], KEYS[2 * i]
  local limit, expiry = tonumber(ARGV[2 + 2 * i]), tonumber(ARGV[3 + 2 * i])
  if mode == 'p' then
    shift(prev, cur, expiry * 1000)
    local mark = #out
    local pc, pt, cc = state(prev, cur)
    -- limits' test(): the weighted count in float seconds, not floored
    if pc * (pt / 1000) / expiry + cc >= limit - cost + 1 then
      out[1] = i
      return out
    end
    for j = mark + 1, mark + 4 do out[j] = nil end
  else
    local ms = expiry * 1000
    local ok = cost <= limit
    if ok then
      shift(prev, cur, ms)
      local pc = tonumber(redis.call('get', prev)) or 0
      local pt = tonumber(redis.call('pttl', prev)) or 0
      local cc = tonumber(redis.call('get', cur)) or 0
      if pt <= 0 then pt = 0 end
      ok = math.floor(pc * pt / ms) + cc + cost <= limit
    end
    if not ok then
      out[1] = i
      shift(prev, cur, ms)
      state(prev, cur)
      return out
    end
    if redis.call('exists', cur) == 1 then
      redis.call('incrby', cur, cost)
    else
      redis.call('set', cur, cost, 'PX', ms * 2)
    end
  end
end
if mode == 's' then
  for i = 1, #KEYS / 2 do
    shift(KEYS[2 * i - 1], KEYS[2 * i], tonumber(ARGV[3 + 2 * i]) * 1000)
    state(KEYS[2 * i - 1], KEYS[2 * i])
  end
end
return out
"""
)

SCRIPTS: Final = {"fixed-window": _FIXED, "moving-window": _MOVING, "sliding-window-counter": _SLIDING}
_WIDTH: Final = {"fixed-window": 2, "moving-window": 2, "sliding-window-counter": 4}


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

    __slots__ = ("amount", "expiry", "head", "limit", "n", "rule", "seconds", "tail")

    def __init__(self, rule: Rule, limit: Limit, prefix: str, cluster: bool) -> None:
        item = limit.item
        self.rule, self.limit = rule, limit
        self.n, self.seconds = limit.n, limit.expiry
        self.amount, self.expiry = str(limit.n), str(limit.expiry)
        tail = f"/{item.amount}/{item.multiples}/{item.GRANULARITY.name}"
        if cluster:  # the client key goes in front, as the hash tag
            self.head, self.tail = f"{prefix}:{{", f"}}:{item.namespace}/{rule.name}/\0{tail}"
        else:
            self.head, self.tail = f"{prefix}:{item.namespace}/{rule.name}/", tail


class ScriptDecider:
    """Decisions and peeks over a Redis, one script call each (see the module docstring)."""

    #: (rule, limit) pairs whose key names are remembered; dropped whole when full.
    CACHE = 4096

    def __init__(self, client: Any, prefix: str, cluster: bool, strategy: str) -> None:
        import hashlib

        from redis.exceptions import NoScriptError

        self.client = client
        self.prefix = prefix
        self.cluster = cluster
        self.strategy = strategy
        self.sliding = strategy == "sliding-window-counter"
        self.width = _WIDTH[strategy]
        self.source = SCRIPTS[strategy]
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()
        self._no_script = NoScriptError
        self._entries: dict[tuple[Rule, Limit], _Entry] = {}
        self._pool = None if cluster else client.connection_pool

    def _keys(self, pairs: Sequence[tuple[Rule, Limit]], key: str) -> tuple[list[_Entry], list[str]]:
        entries = self._entries
        out: list[_Entry] = []
        keys: list[str] = []
        tag = key.replace("{", "").replace("}", "") if self.cluster else ""
        for pair in pairs:
            entry = entries.get(pair)
            if entry is None:
                if len(entries) >= self.CACHE:
                    entries.clear()
                entry = entries[pair] = _Entry(pair[0], pair[1], self.prefix, self.cluster)
            out.append(entry)
            if self.cluster:
                name = entry.head + tag + entry.tail.replace("\0", key, 1)
            else:
                name = entry.head + key + entry.tail
            if self.sliding:  # limits' pair: "{name}/-1" (previous) and "{name}" (current)
                if self.cluster:
                    keys += (name + "/-1", name)
                else:
                    prefix, _, rest = name.partition(":")
                    current = f"{prefix}:{{{rest}}}"
                    keys += (current + "/-1", current)
            else:
                keys.append(name)
        return out, keys

    async def _run(self, mode: str, entries: list[_Entry], keys: list[str], cost: int, now: float) -> Any:
        args: list[Any] = [len(keys), *keys, mode, cost, now]
        for entry in entries:
            args += (entry.amount, entry.expiry)
        pool = self._pool
        if pool is None:  # cluster: the client routes by slot and handles MOVED
            try:
                return await self.client.execute_command("EVALSHA", self.sha, *args)
            except self._no_script:
                return await self.client.execute_command("EVAL", self.source, *args)
        conn = await pool.get_connection()
        try:
            await conn.send_packed_command(conn.pack_command("EVALSHA", self.sha, *args), False)
            try:
                return await conn.read_response()
            except self._no_script:  # a restarted or new server: EVAL loads it again
                await conn.send_packed_command(conn.pack_command("EVAL", self.source, *args), False)
                return await conn.read_response()
        except BaseException:
            # Cancelled by the budget or failed mid-reply: the connection may hold half
            # an answer, so it is not handed out again as it is.
            await conn.disconnect()
            raise
        finally:
            await pool.release(conn)

    async def decide(
        self, pairs: Sequence[tuple[Rule, Limit]], key: str, want_stats: bool, cost: int
    ) -> tuple[Rule | None, Limit | None, int, int]:
        """``Decider.decide`` over Redis: one script call hits every limit in turn."""
        entries, keys = self._keys(pairs, key)
        now = time.time()
        reply = await self._run("s" if want_stats else "h", entries, keys, cost, now)
        refused = reply[0]
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

    async def peek(
        self, pairs: Sequence[tuple[Rule, Limit]], key: str, cost: int
    ) -> tuple[Rule, Limit, int] | None:
        """``Decider.peek`` over Redis: limits' ``test`` of every limit in one script call."""
        entries, keys = self._keys(pairs, key)
        now = time.time()
        reply = await self._run("p", entries, keys, cost, now)
        if not reply[0]:
            return None
        entry = entries[reply[0] - 1]
        reset, _ = self.window(entry, reply, 1, now)
        return entry.rule, entry.limit, max(1, math.ceil(reset - now))

    def window(self, entry: _Entry, reply: Sequence[Any], at: int, now: float) -> tuple[float, int]:
        """limits' ``get_window_stats`` of one window in the reply: (reset time, remaining)."""
        amount, expiry = entry.n, entry.seconds
        if self.strategy == "fixed-window":
            return max(int(reply[at + 1]), 0) + now, max(0, amount - int(reply[at]))
        if self.strategy == "moving-window":
            oldest = reply[at]
            if not oldest:
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
