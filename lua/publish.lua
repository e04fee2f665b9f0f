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
-- Returns  { created (1 if this call declared the topic),
--            { { id, stream_id, seq, duplicate (0|1) } per message } },
--            , 0 }, or { -2, {}, max_backlog } when the topic's max_backlog is reached
--          (nothing written)
--
-- Invariants protected:
--  * seq is strictly increasing with no gaps among non-duplicate publishes
--    (HINCRBY and XADD happen in the same atomic step);
--  * an idempotency key seen inside the topic's window yields the first
--    message's id/stream_id/seq and writes nothing. A record left by an
--    earlier incarnation of a deleted topic is ignored, so deleting a topic
--    never has to scan for its dedup keys;
--  * with max_backlog set, nothing is written while some group has that
--    many messages not yet acked (undelivered + pending + scheduled);
--  * published_at, expires_at and deliver_at come from Redis TIME, the one
--    clock every sidecar shares.
local meta, stream = KEYS[1], KEYS[2]
local now = now_ms()
local incarnation, created = ensure_topic(meta, ARGV[1])
local window = tonumber(redis.call('HGET', meta, 'dedup_window_ms'))

-- Backpressure: refuse while the slowest group is max_backlog behind.
local max_backlog = tonumber(redis.call('HGET', meta, 'max_backlog') or 0)
if max_backlog > 0 and redis.call('EXISTS', stream) == 1 then
  for _, row in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local g = entry_fields(row)
    local lag = g.lag
    if not lag then
      -- Redis cannot tell (e.g. a group started at an arbitrary id): count, bounded.
      lag = #redis.call('XRANGE', stream, '(' .. g['last-delivered-id'], '+', 'COUNT', max_backlog)
    end
    local backlog = lag + g.pending + tonumber(redis.call('HGET', meta, 'delayed:' .. g.name) or 0)
    if backlog >= max_backlog then
      return { -2, {}, max_backlog }
    end
  end
end

local results = {}
local n = tonumber(ARGV[3])
local a = 4
local written = 0
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
  else
    local seq = redis.call('HINCRBY', meta, 'seq', 1)
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
return { created, results, 0 }
