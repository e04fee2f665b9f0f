-- trim.lua: apply a topic's retention without losing anything a group owes.
--
-- KEYS[1]  sc:{T:P}:meta     topic config (retention_ms)
-- KEYS[2]  sc:{T:P}:stream
-- KEYS[3]  sc:{T:P}:groups   set of group names
-- Returns  entries trimmed (0 also when retention is off); -1 when the
--          topic does not exist (a listing left behind: see listing.rs)
--
-- Invariant: an entry is trimmed only if it is older than retention_ms AND
-- every group is done with it: not in the PEL (leased or scheduled for a
-- retry: both stay in the PEL) and not after the group's last-delivered id.
-- XTRIM MINID (exact, never `~`) removes only ids below the smallest safe
-- point. Each safe point is an id Redis gave out (the oldest PEL entry, or
-- the first entry after the last-delivered id), never computed, so no odd
-- group position can make it invalid. Cost: O(groups · log n) per call.
local meta, stream, groups = KEYS[1], KEYS[2], KEYS[3]
if redis.call('EXISTS', meta) == 0 then
  return -1
end
local retention = tonumber(redis.call('HGET', meta, 'retention_ms') or 0)
if retention <= 0 or redis.call('EXISTS', stream) == 0 then
  return 0
end

local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return { tonumber(ms), tonumber(seq), id }
end
local function less(a, b)
  return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2])
end

local now = now_ms()
local limit = { now - retention, 0, int(now - retention) .. '-0' }
local names = {}
for _, name in ipairs(redis.call('SMEMBERS', groups)) do
  names[name] = true
end
for _, row in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
  local info = entry_fields(row)
  if names[info.name] then
    names[info.name] = nil
    -- Everything after the last-delivered id is still owed.
    local after = redis.pcall('XRANGE', stream, '(' .. info['last-delivered-id'], '+', 'COUNT', 1)
    if not after.err and after[1] then
      local first_owed = parse(after[1][1])
      if less(first_owed, limit) then
        limit = first_owed
      end
    end
    -- The oldest entry of the PEL (leased, scheduled or parked): one
    -- entry read, where the summary form lists every consumer.
    local pending = redis.call('XPENDING', stream, info.name, '-', '+', 1)[1]
    if pending then
      local oldest = parse(pending[1])
      if less(oldest, limit) then
        limit = oldest
      end
    end
  end
end
if next(names) then
  return 0 -- a group without its Redis consumer group: trim nothing
end
return redis.call('XTRIM', stream, 'MINID', limit[3])
