-- prune_consumers.lua: forget consumers that own nothing and have been idle
-- for a long time, so a churn of worker names does not grow the group.
--
-- KEYS[1]  sc:{T:P}:stream
-- KEYS[2]  sc:{T:P}:g:<G>   group config (existence check)
-- ARGV[1]  group name
-- ARGV[2…] consumers the caller found idle and owning nothing in XINFO
--          CONSUMERS (at most 1000: src/broker/retention.rs lists them
--          outside any script, so a group with 50,000 consumers never
--          holds Redis for one script call)
-- Returns  consumers removed
--
-- Invariant: a consumer is removed only while it owns no PEL entry, checked
-- in the same step (XGROUP DELCONSUMER would drop its pending entries). One
-- that fetched since the caller listed it and owns nothing is removed all
-- the same (it comes back with its next fetch).
if redis.call('EXISTS', KEYS[2]) == 0 or redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local removed = 0
for i = 2, #ARGV do
  local name = ARGV[i]
  if name ~= SCHEDULED and name ~= PARKED
      and not redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, name)[1] then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], name)
    removed = removed + 1
  end
end
return removed
