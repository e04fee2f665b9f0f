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

-- True while the delivery a receipt names is current: the entry is pending
-- in `group`, owned by `consumer`, with delivery count `attempt`.
local function is_current(stream, group, id, attempt, consumer)
  local p = redis.call('XPENDING', stream, group, id, id, 1)
  return p[1] ~= nil and p[1][2] == consumer and p[1][4] == attempt
end

-- Moves entry `id` out of `group`'s delivery path into the group's
-- dead-letter stream `dlq`: a copy of the original fields plus stream_id,
-- reason, attempts, last_error and dead_lettered_at, then XACK. `flat` is the
-- entry's field list when the caller has it (else it is read). An entry that
-- no longer exists is only acked. Returns 1 if a dead letter was written.
local function dead_letter(stream, group, dlq, id, flat, reason, attempts, last_error, now)
  if not flat then
    local found = redis.call('XRANGE', stream, id, id)
    flat = found[1] and found[1][2]
  end
  redis.call('XACK', stream, group, id)
  if not flat then
    return 0
  end
  local entry = { 'stream_id', id, 'reason', reason, 'attempts', attempts, 'dead_lettered_at', now }
  if last_error and last_error ~= '' then
    entry[#entry + 1] = 'last_error'
    entry[#entry + 1] = last_error
  end
  for i = 1, #flat do
    entry[#entry + 1] = flat[i]
  end
  redis.call('XADD', dlq, '*', unpack(entry))
  return 1
end

-- Drops a pool's holders whose lease ended at or before `now`. Returns how
-- many slots that freed.
local function release_expired(pool, holders, now)
  local gone = redis.call('ZRANGE', holders, '-inf', now, 'BYSCORE')
  for _, id in ipairs(gone) do
    redis.call('HDEL', pool, 'r:' .. id)
  end
  if #gone > 0 then
    redis.call('ZREMRANGEBYSCORE', holders, '-inf', now)
  end
  return #gone
end

-- Records how many retries `group` has scheduled in the topic's meta hash
-- (field 'delayed:<group>'), so publish.lua can measure a group's backlog
-- without touching group keys. Call after changing the schedule.
local function note_delayed(meta, group, delayed)
  redis.call('HSET', meta, 'delayed:' .. group, redis.call('ZCARD', delayed))
end
