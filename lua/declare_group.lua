-- declare_group.lua: create a consumer group or update its config.
--
-- KEYS[1]  sc:{T:P}:meta      topic config (the topic is declared if missing)
-- KEYS[2]  sc:{T:P}:stream    the topic stream (created empty if missing)
-- KEYS[3]  sc:{T:P}:groups    set of group names
-- KEYS[4]  sc:{T:P}:g:<G>     group config hash
-- ARGV[1]  default dedup window ms (for a topic created here)
-- ARGV[2]  group name
-- ARGV[3]  start position for a new group: '0', '$' or a stream id
-- ARGV[4]  D = number of default field/value pairs, then D pairs (written
--          only when the group is created), then pairs to set now
-- Returns  { group_created (0|1), topic_created (0|1) }
--
-- Invariant: a group exists exactly when its config hash exists, its name is
-- in the groups set and the Redis consumer group exists; `start` applies only
-- at creation, so re-declaring never moves a live group's position.
local meta, stream, groups, config = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local _, topic_created = ensure_topic(meta, ARGV[1])
local group = ARGV[2]
local defaults = tonumber(ARGV[4])
local created = 0
if redis.call('EXISTS', config) == 0 then
  local reply = redis.pcall('XGROUP', 'CREATE', stream, group, ARGV[3], 'MKSTREAM')
  if type(reply) == 'table' and reply.err and not string.find(reply.err, 'BUSYGROUP', 1, true) then
    return redis.error_reply(reply.err)
  end
  redis.call('SADD', groups, group)
  redis.call('HSET', config, 'created_at', now_ms(), unpack(ARGV, 5, 4 + 2 * defaults))
  created = 1
end
if #ARGV > 4 + 2 * defaults then
  redis.call('HSET', config, unpack(ARGV, 5 + 2 * defaults))
end
return { created, topic_created }
