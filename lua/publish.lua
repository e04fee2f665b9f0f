-- publish.lua: append one or more messages to a topic, atomically per call.
--
-- KEYS[1]  sc:{T:P}:meta    topic config hash (seq, incarnation,
--                            dedup_window_ms, max_backlog, done:<G> per group)
-- KEYS[2]  sc:{T:P}:stream  the topic stream
-- KEYS[3]  sc:{T:P}:groups  set of the topic's group names
-- KEYS[4]  sc:{T:P}:progress  the groups scored by their done:<G> counters
-- KEYS[5…] sc:{T:P}:dedup:<key>, one per message that has an idempotency key
-- ARGV[1]  dedup window in ms used when this call creates the topic
-- ARGV[2]  pub/sub channel that wakes long-polling fetches of this topic
-- ARGV[3]  number of messages N, then per message:
--          dedup KEYS index (0 = no idempotency key), id, ttl_ms (0 = none),
--          delay_ms (0 = none), F = number of envelope fields, then F name/value pairs
-- Returns  { status, max_backlog, first_seq, then one value per message }:
--          its stream id (a string) when written, { id, stream_id, seq } of
--          the first message when a duplicate, the integer 2 when refused
--          because the backlog is full. Written messages take the seqs
--          first_seq, first_seq + 1, ... in order (first_seq is 0 when none
--          was written), and their ids are the ones sent: one value per
--          message keeps the reply the client parses small. status: 1 if
--          this call declared the topic, else 0; -2 when the backlog refused
--          every message that was not a duplicate (nothing written).
--
-- Invariants protected:
--  * seq is strictly increasing with no gaps among non-duplicate publishes
--    (the messages written take the seqs after the stored one, which is
--    raised by as many in the same atomic step);
--  * an idempotency key seen inside the topic's window yields the first
--    message's id/stream_id/seq and writes nothing, whatever the backlog. A
--    record left by an earlier incarnation of a deleted topic is ignored, so
--    deleting a topic never has to scan for its dedup keys, and so is one
--    older than the current window (a lowered dedup_window_ms applies to
--    keys already seen; prelude.lua `dedup_record`, which publish_dups.lua
--    reads the records with too);
--  * with max_backlog set, a message is written only while the slowest
--    group owes fewer than max_backlog messages (undelivered + leased +
--    scheduled for a retry: meta seq − done:<G>, counters the delivery
--    scripts keep), counting what this call already wrote, so a batch never
--    overshoots: its first items that fit are written, the rest refused.
--    The check reads the slowest group's counter, whatever the backlog's
--    size and the number of groups;
--  * published_at, expires_at and deliver_at come from Redis TIME, the one
--    clock every sidecar shares.
local meta, stream = KEYS[1], KEYS[2]
local now = now_ms()
local incarnation, created = ensure_topic(meta, ARGV[1])
local window = tonumber(redis.call('HGET', meta, 'dedup_window_ms'))

-- Backpressure: room = how many more messages may be written before the
-- slowest group owes max_backlog (nil = unbounded). The slowest group is
-- the first of the progress zset, which the group scripts keep beside each
-- done:<G> counter: O(log groups), so a topic with many groups publishes as
-- fast as one with few. The counters stay the truth: the zset is rebuilt
-- from them when it does not hold as many groups as the group set, or its
-- slowest member is not a group with that counter (a topic written by an
-- older version, or by one during a rolling upgrade: a member of a group
-- it deleted would otherwise hold the check at its old count for good).
-- A group in the set whose counter is missing counts as owing everything,
-- as topic_info.lua reads it.
local max_backlog = tonumber(redis.call('HGET', meta, 'max_backlog') or 0)
local room = nil
if max_backlog > 0 then
  local progress = KEYS[4]
  local slowest = redis.call('ZRANGE', progress, 0, 0, 'WITHSCORES')
  local stale = redis.call('ZCARD', progress) ~= redis.call('SCARD', KEYS[3])
  if slowest[1] and not stale then
    stale = redis.call('SISMEMBER', KEYS[3], slowest[1]) == 0
      or tonumber(redis.call('HGET', meta, 'done:' .. slowest[1]) or 0) ~= tonumber(slowest[2])
  end
  if stale then
    redis.call('DEL', progress)
    local names = redis.call('SMEMBERS', KEYS[3])
    -- In chunks: unpack() of thousands of values would overflow Lua's stack.
    for first = 1, #names, 1000 do
      local fields, scored = {}, {}
      for i = first, math.min(first + 999, #names) do
        fields[#fields + 1] = 'done:' .. names[i]
      end
      for i, done in ipairs(redis.call('HMGET', meta, unpack(fields))) do
        scored[#scored + 1] = done or 0
        scored[#scored + 1] = names[first + i - 1]
      end
      redis.call('ZADD', progress, unpack(scored))
    end
    slowest = redis.call('ZRANGE', progress, 0, 0, 'WITHSCORES')
  end
  if slowest[1] then
    room = max_backlog - (tonumber(redis.call('HGET', meta, 'seq') or 0) - tonumber(slowest[2]))
  end
end

-- The reply: status (set last), max_backlog, first_seq (set at the first
-- write), then one value per message.
local results = { 0, max_backlog, 0 }
local published_at = int(now)
-- Written messages take the seqs after the stored one. The first write
-- raises it by one (before its XADD, so a stored seq is never behind a
-- written one) and the call's last step by the rest: two HINCRBYs per call,
-- not one per message. Nothing after the first XADD can fail (XADD '*' to
-- this stream and SET with a validated window fail, if at all, on the
-- first message), so the last step always runs once anything was written.
local seq_before = nil
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
    previous = dedup_record(redis.call('GET', KEYS[dedup_index]), incarnation, now, window)
  end

  if previous then
    results[#results + 1] = { previous[1], previous[2], previous[3] }
  elseif room and room <= 0 then
    results[#results + 1] = 2
    refused = refused + 1
  else
    if room then
      room = room - 1
    end
    if not seq_before then
      seq_before = tonumber(redis.call('HINCRBY', meta, 'seq', 1)) - 1
    end
    -- Integers go out as exact text (int), never through Lua's 14 digits.
    local seq = int(seq_before + written + 1)
    local entry = { 'id', id, 'seq', seq, 'published_at', published_at }
    if ttl_ms > 0 then
      entry[#entry + 1] = 'expires_at'
      entry[#entry + 1] = int(now + ttl_ms)
    end
    if delay_ms > 0 then
      entry[#entry + 1] = 'deliver_at'
      entry[#entry + 1] = int(now + delay_ms)
    end
    for f = first_field, first_field + 2 * nfields - 1 do
      entry[#entry + 1] = ARGV[f]
    end
    local stream_id = redis.call('XADD', stream, '*', unpack(entry))
    if dedup_index > 0 then
      redis.call('SET', KEYS[dedup_index],
        incarnation .. '\n' .. id .. '\n' .. stream_id .. '\n' .. seq, 'PX', window)
    end
    if written == 0 then
      results[3] = seq
    end
    results[#results + 1] = stream_id
    written = written + 1
  end
end
if written > 1 then
  redis.call('HINCRBY', meta, 'seq', written - 1)
end
if written > 0 then
  redis.call('PUBLISH', ARGV[2], int(written))
end
if written == 0 and refused > 0 then
  results[1] = -2
else
  results[1] = created
end
return results
