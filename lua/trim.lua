-- trim.lua: apply a topic's retention without losing anything a group owes.
--
-- KEYS[1]  sc:{T:P}:meta     topic config (retention_ms)
-- KEYS[2]  sc:{T:P}:stream
-- KEYS[3]  sc:{T:P}:groups   set of group names
-- KEYS[4…] sc:{T:P}:g:<G>:delayed of every group in KEYS[3], in ARGV order
-- ARGV     the group names the caller read from KEYS[3]
-- Returns  entries trimmed (0 also when retention is off), or -1 when the
--          group set changed since the caller read it (read again, retry)
--
-- Invariant: an entry is trimmed only if it is older than retention_ms AND
-- every group is done with it: not pending, not scheduled for a retry, and at
-- or before the group's last-delivered id. XTRIM MINID (exact, never `~`)
-- removes only ids below the smallest such safe point.
local meta, stream, groups = KEYS[1], KEYS[2], KEYS[3]
local retention = tonumber(redis.call('HGET', meta, 'retention_ms') or 0)
if retention <= 0 then
  return 0
end
if redis.call('SCARD', groups) ~= #ARGV then
  return -1
end
for _, g in ipairs(ARGV) do
  if redis.call('SISMEMBER', groups, g) == 0 then
    return -1
  end
end

local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return { tonumber(ms), tonumber(seq) }
end
local function less(a, b)
  return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2])
end

local now = now_ms()
local limit = { now - retention, 0 }
local info = {}
if redis.call('EXISTS', stream) == 1 and #ARGV > 0 then
  for _, row in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local g = entry_fields(row)
    info[g.name] = g
  end
end
for i, g in ipairs(ARGV) do
  local group = info[g]
  if not group then
    return 0 -- a group without its Redis consumer group: trim nothing
  end
  -- Everything after the last-delivered id is still owed.
  local last = parse(group['last-delivered-id'])
  local safe = { last[1], last[2] + 1 }
  local first_pending = redis.call('XPENDING', stream, g, '-', '+', 1)[1]
  if first_pending then
    local p = parse(first_pending[1])
    if less(p, safe) then
      safe = p
    end
  end
  if redis.call('ZCARD', KEYS[3 + i]) > 100000 then
    return 0 -- too large to scan here; trimming later is always safe
  end
  for _, member in ipairs(redis.call('ZRANGE', KEYS[3 + i], 0, -1)) do
    local d = parse(string.match(member, '^([^|]+)|'))
    if less(d, safe) then
      safe = d
    end
  end
  if less(safe, limit) then
    limit = safe
  end
end
return redis.call('XTRIM', stream, 'MINID', string.format('%d-%d', limit[1], limit[2]))
