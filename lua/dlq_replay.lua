-- dlq_replay.lua: send dead letters back to their group for a fresh start.
--
-- KEYS[1]  sc:{T:P}:stream
-- KEYS[2]  sc:{T:P}:g:<G>          group config (existence check)
-- KEYS[3]  sc:{T:P}:g:<G>:delayed  retry schedule
-- KEYS[4]  sc:{T:P}:g:<G>:dlq      dead letters
-- KEYS[5]  sc:{T:P}:meta           topic meta (per-group retry counts)
-- ARGV[1]  group name
-- ARGV[2]  pub/sub wake channel of the topic
-- ARGV[3]  scan cursor: dead-letter stream id to scan after ('-' = start)
-- ARGV[4]  most dead letters to scan in this call
-- ARGV[5…] message ids to replay (none = every dead letter scanned)
-- Returns  { status, { replayed message ids }, { message ids whose stream
--            entry no longer exists (kept in the DLQ) }, next cursor ('' = done) }
--          status -1 = no such group
--
-- Invariants: replay touches only this group (its schedule and its DLQ), so
-- other groups of the topic are unaffected; a replayed message starts again
-- at attempt 1 (member '<id>|0'); a dead letter whose original entry was
-- trimmed by retention is kept, never silently dropped.
local stream, config, delayed, dlq, meta = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
if redis.call('EXISTS', config) == 0 then
  return { -1, {}, {}, '' }
end
local wanted = nil
if #ARGV > 4 then
  wanted = {}
  for i = 5, #ARGV do
    wanted[ARGV[i]] = true
  end
end
local start = ARGV[3] == '-' and '-' or '(' .. ARGV[3]
local count = tonumber(ARGV[4])
local now = now_ms()
local scanned = redis.call('XRANGE', dlq, start, '+', 'COUNT', count)
local replayed, missing = {}, {}
for _, letter in ipairs(scanned) do
  local fields = entry_fields(letter[2])
  if wanted == nil or wanted[fields.id] then
    if redis.call('XRANGE', stream, fields.stream_id, fields.stream_id)[1] then
      redis.call('ZADD', delayed, now, fields.stream_id .. '|0')
      redis.call('XDEL', dlq, letter[1])
      replayed[#replayed + 1] = fields.id
    else
      missing[#missing + 1] = fields.id
    end
  end
end
if #replayed > 0 then
  note_delayed(meta, ARGV[1], delayed)
  redis.call('PUBLISH', ARGV[2], 0)
end
local next_cursor = ''
if #scanned == count then
  next_cursor = scanned[#scanned][1]
end
return { 1, replayed, missing, next_cursor }
