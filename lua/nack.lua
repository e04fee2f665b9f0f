-- nack.lua: give deliveries back for a retry, or dead-letter them once they
-- have used their last allowed attempt.
--
-- KEYS[1]  sc:{T:P}:stream
-- KEYS[2]  sc:{T:P}:g:<G>          group config (max_deliveries)
-- KEYS[3]  sc:{T:P}:g:<G>:delayed  retry schedule
-- KEYS[4]  sc:{T:P}:g:<G>:dlq      dead letters
-- KEYS[5]  sc:{T:P}:meta           topic meta (per-group retry counts)
-- ARGV[1]  group name
-- ARGV[2]  error text ('' = none), kept as last_error when dead-lettered
-- ARGV[3]  pub/sub wake channel of the topic
-- ARGV[4…] quads: stream id, attempt, consumer, retry delay ms
-- Returns  { status, { 1 scheduled | 2 dead-lettered | 0 lease_lost … } }
--          status 1 ok, -1 no such group
--
-- Invariants: a retry leaves the PEL and enters the schedule in one step
-- (member '<id>|<attempt>'), so XAUTOCLAIM never sees a parked entry and the
-- retry's attempt count survives any sidecar; nothing is dropped: an entry
-- is either scheduled or in the dead-letter stream.
local stream, config, delayed, dlq, meta = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local max_deliveries = tonumber(redis.call('HGET', config, 'max_deliveries'))
if not max_deliveries then
  return { -1, {} }
end
local group, err, channel = ARGV[1], ARGV[2], ARGV[3]
local now = now_ms()
local wake = false
local out = {}
for i = 4, #ARGV, 4 do
  local id, attempt, consumer, delay = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2], tonumber(ARGV[i + 3])
  if not is_current(stream, group, id, attempt, consumer) then
    out[#out + 1] = 0
  elseif attempt >= max_deliveries then
    dead_letter(stream, group, dlq, id, nil, 'max_deliveries', attempt, err, now)
    out[#out + 1] = 2
  else
    redis.call('XACK', stream, group, id)
    redis.call('ZADD', delayed, now + delay, id .. '|' .. attempt)
    out[#out + 1] = 1
    wake = wake or delay == 0
  end
end
note_delayed(meta, group, delayed)
if wake then
  redis.call('PUBLISH', channel, 0)
end
return { 1, out }
