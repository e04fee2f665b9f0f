-- delete_group.lua: delete a consumer group with everything it holds.
--
-- KEYS[1..11]  the group keys (prelude.lua `group_keys`)
-- KEYS[12]     sc:{T:P}:groups
-- ARGV[1]      group name
-- ARGV[2]      the topic's wake-up channel (unused)
-- Returns  1 deleted, 0 no such group
--
-- Invariant: the Redis consumer group, its config, its keys and its backlog
-- counter go together, so a group created again under the same name starts
-- clean (and its delivery numbers, from the topic's counter, never repeat
-- the old group's).
local g = group_keys()
if redis.call('EXISTS', g.config) == 0 then
  return 0
end
redis.pcall('XGROUP', 'DESTROY', g.stream, g.name)
redis.call('UNLINK', g.config, g.delayed, g.dlq, g.dlq_index, g.leases, g.deliveries, g.heads,
  g.parked)
redis.call('SREM', KEYS[12], g.name)
redis.call('HDEL', g.meta, 'done:' .. g.name, 'delayed:' .. g.name)
redis.call('ZREM', g.progress, g.name)
return 1
