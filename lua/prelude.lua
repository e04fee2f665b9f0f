-- prelude.lua: helpers prepended to every script by src/scripts.rs (Lua
-- scripts cannot load modules). Defines no keys and writes nothing itself.

-- Milliseconds since the epoch by the Redis clock, plus the raw TIME reply.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), t
end

-- Creates a topic's meta hash with defaults unless it exists. Returns the
-- topic's incarnation and 1 if this call created it (else 0).
local function ensure_topic(meta, default_dedup_window_ms)
  local incarnation = redis.call('HGET', meta, 'incarnation')
  if incarnation then
    return incarnation, 0
  end
  local now, t = now_ms()
  incarnation = t[1] .. '.' .. t[2]
  redis.call('HSET', meta, 'incarnation', incarnation, 'created_at', now,
    'dedup_window_ms', default_dedup_window_ms, 'retention_ms', 0, 'max_backlog', 0, 'seq', 0)
  return incarnation, 1
end

-- Flat {field, value, …} reply of a stream entry → table by field name.
local function entry_fields(flat)
  local fields = {}
  for i = 1, #flat, 2 do
    fields[flat[i]] = flat[i + 1]
  end
  return fields
end
