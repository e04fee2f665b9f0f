-- delete_group.lua: delete a consumer group with its retry schedule and
-- dead letters.
--
-- KEYS[1]  sc:{T:P}:stream
-- KEYS[2]  sc:{T:P}:groups
-- KEYS[3]  sc:{T:P}:g:<G>            config
-- KEYS[4]  sc:{T:P}:g:<G>:delayed    retry schedule
-- KEYS[5]  sc:{T:P}:g:<G>:dlq        dead letters
-- KEYS[6]  sc:{T:P}:meta              topic meta (per-group retry counts)
-- ARGV[1]  group name
-- Returns  1 deleted, 0 no such group
--
-- Invariant: the Redis consumer group, its config and its keys go together.
if redis.call('EXISTS', KEYS[3]) == 0 then
  return 0
end
redis.pcall('XGROUP', 'DESTROY', KEYS[1], ARGV[1])
redis.call('UNLINK', KEYS[3], KEYS[4], KEYS[5])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[6], 'delayed:' .. ARGV[1])
return 1
