-- publish.lua: append one or more messages to a topic, atomically per call.
--
-- KEYS[1]  sc:{T:P}:meta    topic config hash (seq, incarnation, dedup_window_ms)
-- KEYS[2]  sc:{T:P}:stream  the topic stream
-- KEYS[3…] sc:{T:P}:dedup:<key>, one per message that has an idempotency key
-- ARGV[1]  dedup window in ms used when this call creates the topic
-- ARGV[2]  pub/sub channel that wakes long-polling fetches of this topic
-- ARGV[3]  number of messages N, then per message:
--          dedup KEYS index (0 = no idempotency key), id, ttl_ms (0 = none),
--          delay_ms (0 = none), F = number of envelope fields, then F name/value pairs
-- Returns  { status, { { id, stream_id, seq, outcome } per message }, max_backlog }
--          status: 1 if this call declared the topic, else 0; -2 when the
--          backlog refused every message that was not a duplicate (nothing
--          written). outcome: 0 written, 1 duplicate (the first message's id,
--          stream_id and seq), 2 refused because the backlog is full
--          (stream_id '' and seq 0).
--
-- Invariants protected:
--  * seq is strictly increasing with no gaps among non-duplicate publishes
--    (HINCRBY and XADD happen in the same atomic step);
--  * an idempotency key seen inside the topic's window yields the first
--    message's id/stream_id/seq and writes nothing, whatever the backlog. A
--    record left by an earlier incarnation of a deleted topic is ignored, so
--    deleting a topic never has to scan for its dedup keys
--    (publish_dups.lua reads the same records);
--  * with max_backlog set, a message is written only while the slowest
--    group owes fewer than max_backlog messages (undelivered + pending +
--    scheduled), counting what this call already wrote, so a batch never
--    overshoots: its first items that fit are written, the rest refused;
--  * published_at, expires_at and deliver_at come from Redis TIME, the one
--    clock every sidecar shares.
local meta, stream = KEYS[1], KEYS[2]
local now = now_ms()
local incarnation, created = ensure_topic(meta, ARGV[1])
local window = tonumber(redis.call('HGET', meta, 'dedup_window_ms'))

-- Backpressure: room = how many more messages may be written before the
-- slowest group owes max_backlog (nil = unbounded).
local max_backlog = tonumber(redis.call('HGET', meta, 'max_backlog') or 0)
local room = nil
if max_backlog > 0 and redis.call('EXISTS', stream) == 1 then
  local worst = 0
  for _, row in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local g = entry_fields(row)
    local lag = g.lag
    if not lag then
      -- Redis cannot tell (e.g. a group started at an arbitrary id): count, bounded.
      lag = #redis.call('XRANGE', stream, '(' .. g['last-delivered-id'], '+', 'COUNT', max_backlog)
    end
    local backlog = lag + g.pending + tonumber(redis.call('HGET', meta, 'delayed:' .. g.name) or 0)
    worst = math.max(worst, backlog)
  end
  room = max_backlog - worst
end

local results = {}
local n = tonumber(ARGV[3])
local a = 4
local written = 0
local refused = 0
for _ = 1, n do
  local dedup_index = tonumber(ARGV[a])
  local id = ARGV[a + 1]
  local ttl_ms = tonumber(ARGV[a + 2])
  local delay_ms = tonumber(ARGV[a + 3])
  local nfields = tonumber(ARGV[a + 4])
  local first_field = a + 5
  a = first_field + 2 * nfields

  local previous = nil
  if dedup_index > 0 then
    local record = redis.call('GET', KEYS[dedup_index])
    if record then
      local inc, pid, psid, pseq = string.match(record, '^([^\n]*)\n([^\n]*)\n([^\n]*)\n([^\n]*)$')
      if inc == incarnation then
        previous = { pid, psid, tonumber(pseq), 1 }
      end
    end
  end

  if previous then
    results[#results + 1] = previous
  elseif room and room <= 0 then
    results[#results + 1] = { id, '', 0, 2 }
    refused = refused + 1
  else
    if room then
      room = room - 1
    end
    -- A Redis integer reply; kept as '%d' text so it never passes through
    -- Lua's 14-digit number formatting.
    local seq = string.format('%d', redis.call('HINCRBY', meta, 'seq', 1))
    local entry = { 'id', id, 'seq', seq, 'published_at', now }
    if ttl_ms > 0 then
      entry[#entry + 1] = 'expires_at'
      entry[#entry + 1] = now + ttl_ms
    end
    if delay_ms > 0 then
      entry[#entry + 1] = 'deliver_at'
      entry[#entry + 1] = now + delay_ms
    end
    for f = first_field, first_field + 2 * nfields - 1 do
      entry[#entry + 1] = ARGV[f]
    end
    local stream_id = redis.call('XADD', stream, '*', unpack(entry))
    if dedup_index > 0 then
      redis.call('SET', KEYS[dedup_index],
        incarnation .. '\n' .. id .. '\n' .. stream_id .. '\n' .. seq, 'PX', window)
    end
    results[#results + 1] = { id, stream_id, seq, 0 }
    written = written + 1
  end
end
if written > 0 then
  redis.call('PUBLISH', ARGV[2], written)
end
if written == 0 and refused > 0 then
  return { -2, results, max_backlog }
end
return { created, results, max_backlog }
