-- prune_consumers.lua: forget consumers that own nothing and have been idle
-- for a long time, so a churn of worker names does not grow the group.
--
-- KEYS[1]  sc:{T:P}:stream
-- KEYS[2]  sc:{T:P}:g:<G>   group config (existence check)
-- ARGV[1]  group name
-- ARGV[2]  idle time in ms after which an empty consumer is removed
-- Returns  consumers removed
--
-- Invariant: a consumer is removed only while it owns no PEL entry, checked
-- in the same step (XGROUP DELCONSUMER would drop its pending entries).
if redis.call('EXISTS', KEYS[2]) == 0 or redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local idle_limit = tonumber(ARGV[2])
local removed = 0
for _, row in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local c = entry_fields(row)
  if c.name ~= SCHEDULED and c.name ~= PARKED and c.pending == 0 and c.idle >= idle_limit then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], c.name)
    removed = removed + 1
  end
end
return removed
