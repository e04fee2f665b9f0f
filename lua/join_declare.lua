-- join_declare.lua: declare a fan-in join on a topic.
--
-- KEYS[1]  sc:{T:P}:join:<J>   the join
-- KEYS[2]  sc:{T:P}:joins      open joins by deadline (zset)
-- KEYS[3]  sc:{T:P}:meta       topic meta (the topic is declared if missing)
-- ARGV[1]  default dedup window ms (for a topic created here)
-- ARGV[2]  join name
-- ARGV[3]  parts, newline-separated (names: no newline)
-- ARGV[4]  ttl_ms
-- ARGV[5]  on_timeout: 'emit' | 'dead_letter'
-- ARGV[6]  how long a finished join stays readable, ms
-- ARGV[7]  the declaring caller's W3C traceparent ('' = none; checked by the
--          sidecar), carried by the aggregate
-- ARGV[8]  the aggregate's ordering key ('' = none)
-- ARGV[9]  the aggregate's correlation_id ('' = none)
-- Returns  { 1 created | 0 same join exists | -1 exists with other parts,
--            on_timeout, key or correlation_id, topic created (0|1) }
--
-- Invariants: a join's declaration never changes once made
-- (a part could otherwise be recorded against a different set); a join of
-- an earlier incarnation of the topic is ignored and replaced; every join
-- key expires (deadline + the keep time), so abandoned joins never pile up.
local join, deadlines, meta = KEYS[1], KEYS[2], KEYS[3]
local incarnation, topic_created = ensure_topic(meta, ARGV[1])
local current = redis.call('HMGET', join, 'incarnation', 'parts', 'on_timeout', 'key',
  'correlation_id')
if current[1] == incarnation then
  if current[2] == ARGV[3] and current[3] == ARGV[5] and (current[4] or '') == ARGV[8]
      and (current[5] or '') == ARGV[9] then
    return { 0, topic_created }
  end
  return { -1, topic_created }
end
local now = now_ms()
local ttl = tonumber(ARGV[4])
local _, parts = string.gsub(ARGV[3], '\n', '\n')
redis.call('DEL', join)
redis.call('HSET', join, 'incarnation', incarnation, 'parts', ARGV[3], 'total', int(parts + 1),
  'recorded', 0, 'bytes', 0, 'on_timeout', ARGV[5], 'state', 'open', 'created_at', int(now),
  'deadline', int(now + ttl), 'traceparent', ARGV[7] or '', 'key', ARGV[8],
  'correlation_id', ARGV[9])
redis.call('PEXPIRE', join, int(ttl + tonumber(ARGV[6])))
redis.call('ZADD', deadlines, int(now + ttl), ARGV[2])
return { 1, topic_created }
