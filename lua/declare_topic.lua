-- declare_topic.lua: create a topic or update its config.
--
-- KEYS[1]  sc:{T:P}:meta  topic config hash
-- ARGV     field/value pairs to set, among retention_ms, max_backlog,
--          dedup_window_ms; a field not given keeps its value (or default)
-- ARGV[1]  default dedup window in ms (used only when creating), then the pairs
-- Returns  1 if this call created the topic, 0 if it updated it
--
-- Invariant: a topic's meta always has incarnation, created_at, seq and every
-- config field, whether it was declared here or by a first publish
-- (publish.lua writes the same defaults).
local meta = KEYS[1]
local created = 0
if redis.call('EXISTS', meta) == 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('HSET', meta, 'incarnation', t[1] .. '.' .. t[2], 'created_at', now,
    'dedup_window_ms', ARGV[1], 'retention_ms', 0, 'max_backlog', 0, 'seq', 0)
  created = 1
end
if #ARGV > 1 then
  redis.call('HSET', meta, unpack(ARGV, 2))
end
return created
