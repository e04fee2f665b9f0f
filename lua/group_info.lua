-- group_info.lua: one consistent reading of a group (GET group, gauges).
--
-- KEYS[1..11]  the group keys (prelude.lua `group_keys`)
-- ARGV[1]      group name
-- ARGV[2]      the topic's wake-up channel (unused)
-- ARGV[3]      '1' for the counts only: no consumers ({}), which XINFO
--              CONSUMERS lists all of (O(consumers of the group)). Nothing
--              here lists the topic's groups (prelude.lua
--              `last_delivered`), so a pass over all groups (the gauges)
--              costs O(groups), not O(groups²).
-- Returns  nil when the group does not exist, else
--          { {config field, value, …}, lag, leased, scheduled, dead letters,
--            last-delivered id, { {consumer, pending, idle_ms} … }, parked }
--
-- Read in one step so a racing delete answers "no such group", never a
-- half-read error. Writes nothing but, once for a group declared by an
-- older version, the copy of its last-delivered id (prelude.lua
-- `last_delivered`): derived from what Redis holds, so a copy lost with a
-- replica is read again, and the script may stay read-only for `WAIT`. lag = what the group owes that it has not started:
-- meta seq − done:<G> − everything in its PEL (leased, scheduled or
-- parked behind its key).

local g = group_keys()
local config = redis.call('HGETALL', g.config)
if #config == 0 then
  return false
end
local meta = redis.call('HMGET', g.meta, 'seq', 'done:' .. g.name)
local in_pel = redis.call('XPENDING', g.stream, g.name)[1]
local lag = tonumber(meta[1] or 0) - tonumber(meta[2] or 0) - in_pel
local last = last_delivered(g) or ''
local consumers = {}
if ARGV[3] ~= '1' then
  for _, row in ipairs(redis.call('XINFO', 'CONSUMERS', g.stream, g.name)) do
    local c = entry_fields(row)
    if c.name ~= SCHEDULED and c.name ~= PARKED then
      consumers[#consumers + 1] = { c.name, c.pending, c.idle }
    end
  end
end
return { config, math.max(lag, 0), redis.call('ZCARD', g.leases), redis.call('ZCARD', g.delayed),
  redis.call('XLEN', g.dlq), last, consumers, redis.call('ZCARD', g.parked) }
