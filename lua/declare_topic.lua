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
-- (both use ensure_topic from prelude.lua).
local meta = KEYS[1]
local _, created = ensure_topic(meta, ARGV[1])
if #ARGV > 1 then
  redis.call('HSET', meta, unpack(ARGV, 2))
end
return created
