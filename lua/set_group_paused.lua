-- set_group_paused.lua: pause or resume a group's deliveries.
--
-- KEYS[1]  sc:{T:P}:g:<G>  group config
-- ARGV[1]  '1' to pause, '0' to resume
-- Returns  1 done, 0 no such group
--
-- Invariant: never creates a config hash for a group that does not exist.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], 'paused', ARGV[1])
return 1
