"""The Lua scripts behind ``ratelimit_redis``: limits' own Redis scripts, one call per decision.

Each is limits' ``hit``, ``test`` and ``get_window_stats`` for one strategy (its scripts
in ``limits/resources/redis/lua_scripts``, copied step for step), run over every limit
of a rule in turn. ``tests/test_ratelimit_redis.py`` holds them to limits' answers.
"""

from __future__ import annotations

from typing import Final

__all__ = ["SCRIPTS", "WIDTH"]

# ARGV: mode ('h' hit, 's' hit and answer every window, 'p' peek), cost, now, then
# (amount, expiry) per limit. The reply, one string of numbers (one bulk reply parses
# far cheaper than an array): the refused index or 0, then the state of each window
# answered; a hit answers only the refused window, or every window in mode 's'.
_HEAD: Final = """
local mode, cost, now = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local out = {0}
local function reply() return table.concat(out, ' ') end
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
      return reply()
    end
  else
    local current = redis.call('incrby', KEYS[i], cost)
    if current == cost then
      redis.call('expire', KEYS[i], expiry)
    end
    if current > limit then
      out[1] = i
      state(KEYS[i])
      return reply()
    end
  end
end
if mode == 's' then
  for i = 1, #KEYS do state(KEYS[i]) end
end
return reply()
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
    out[#out + 1] = '-'
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
      return reply()
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
      return reply()
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
return reply()
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
      return reply()
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
      return reply()
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
return reply()
"""
)


SCRIPTS: Final = {
    "fixed-window": _FIXED,
    "moving-window": _MOVING,
    "sliding-window-counter": _SLIDING,
}
WIDTH: Final = {"fixed-window": 2, "moving-window": 2, "sliding-window-counter": 4}
