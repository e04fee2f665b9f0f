-- dlq_replay.lua: send dead letters back to their group for a fresh start.
--
-- KEYS[1..10]  the group keys (prelude.lua `group_keys`)
-- ARGV[1]  group name
-- ARGV[2]  pub/sub wake channel of the topic
-- ARGV[3]  dead letter id to go after ('-' = from the first): replaying all,
--          where the scan starts; with ids, their dead letters up to it stay
-- ARGV[4]  most dead letters to scan in this call when replaying all
-- ARGV[5…] message ids to replay (none = all, a chunk per call)
-- Returns  { status, { replayed message ids }, { message ids whose stream
--            entry no longer exists or is in progress (kept in the DLQ) },
--            next cursor ('' = done) }, status -1 = no such group
--
-- Invariants: replay touches only this group (its schedule, DLQ and index),
-- so other groups of the topic are unaffected; in an ordered group a
-- replayed message joins the back of its key: behind every message of the
-- key published before the replay (when the group has not read them all
-- yet, it waits, deferred, until fetch has: prelude.lua `defer_replay`);
-- a replayed message starts again at attempt 1 (member '<id>|0', parked
-- in the PEL like any retry) and is owed again (`done:<G>` − 1); it gets
-- new receipts, never an old one's; a dead letter whose original entry was trimmed by retention is
-- kept, never silently dropped. Cost: O(log n) per dead letter touched,
-- plus one read and write of each touched message id's index entry; ids
-- are found through the index, never by scanning the DLQ.
local g = group_keys()
if redis.call('EXISTS', g.config) == 0 then
  return { -1, {}, {}, '' }
end
local now = now_ms()
local replayed, missing = {}, {}

-- An ordered group that has not read its whole stream may not have seen
-- every earlier message of a replayed key: `top` (the stream's last id)
-- is where a replay of a keyed message waits for the group to read to.
local top
if g.ordered then
  local last = redis.call('XREVRANGE', g.stream, '+', '-', 'COUNT', 1)[1]
  local read = last and last_delivered(g)
  if read and sortable_id(read) < sortable_id(last[1]) then
    top = last[1]
  end
end

-- Dead letters leaving the index, by message id: dropped from it once at
-- the end (`flush_index`), so a message id with k dead letters (ids need
-- not be unique) costs O(k) per call, not O(k) per dead letter (5,000
-- dead letters of one id took 3.2 s in one call).
local gone, touched = {}, {}
local function unindex(message_id, letter)
  if not gone[message_id] then
    gone[message_id] = {}
    touched[#touched + 1] = message_id
  end
  gone[message_id][letter] = true
end
local function flush_index()
  for _, message_id in ipairs(touched) do
    local rest = {}
    for l in string.gmatch(redis.call('HGET', g.dlq_index, message_id) or '', '%S+') do
      if not gone[message_id][l] then
        rest[#rest + 1] = l
      end
    end
    if #rest == 0 then
      redis.call('HDEL', g.dlq_index, message_id)
    else
      redis.call('HSET', g.dlq_index, message_id, table.concat(rest, ' '))
    end
  end
end

-- Replays one dead letter (id `letter`, fields `fields`).
local function replay(letter, fields)
  local sid = fields.stream_id
  local in_stream = redis.call('XRANGE', g.stream, sid, sid)[1]
  local in_progress = redis.call('XPENDING', g.stream, g.name, sid, sid, 1)[1]
  if not in_stream or in_progress then
    missing[#missing + 1] = fields.id
    return
  end
  local key = order_key(g, fields)
  if key and top then
    defer_replay(g, key, sid, top)
  elseif not key or take_key(g, key, sid, true) then
    schedule(g, sid, 0, now, true)
  end
  redis.call('HINCRBY', g.meta, 'done:' .. g.name, -1)
  redis.call('ZINCRBY', g.progress, -1, g.name)
  redis.call('XDEL', g.dlq, letter)
  unindex(fields.id or '', letter)
  replayed[#replayed + 1] = fields.id
end

local next_cursor = ''
if #ARGV > 4 then
  for i = 5, #ARGV do
    for letter in string.gmatch(redis.call('HGET', g.dlq_index, ARGV[i]) or '', '%S+') do
      local found = redis.call('XRANGE', g.dlq, letter, letter)[1]
      if not found then
        unindex(ARGV[i], letter)
      elseif ARGV[3] == '-' or sortable_id(letter) > sortable_id(ARGV[3]) then
        replay(letter, entry_fields(found[2]))
      end
    end
  end
else
  local start = ARGV[3] == '-' and '-' or '(' .. ARGV[3]
  local count = tonumber(ARGV[4])
  local scanned = redis.call('XRANGE', g.dlq, start, '+', 'COUNT', count)
  for _, letter in ipairs(scanned) do
    replay(letter[1], entry_fields(letter[2]))
  end
  if #scanned == count then
    next_cursor = scanned[#scanned][1]
  end
end
flush_index()
if #replayed > 0 then
  redis.call('PUBLISH', ARGV[2], 0)
end
return { 1, replayed, missing, next_cursor }
