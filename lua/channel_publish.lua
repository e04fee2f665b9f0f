-- channel_publish.lua: append one message to a channel's bounded history
-- and PUBLISH it live, in one step, so every live message is also in the
-- history under the same epoch and offset.
--
-- KEYS[1] history stream, KEYS[2] meta hash (epoch, top), KEYS[3] config
-- hash, KEYS[4] idempotency record (any key of the tag when unused).
-- ARGV[1] payload JSON, ARGV[2] headers JSON object, ARGV[3] '1' when
-- KEYS[4] is a real idempotency record, ARGV[4] the live pub/sub channel,
-- ARGV[5] default history_size, ARGV[6] default history_ttl_ms, ARGV[7]
-- how long a declared config is kept after its last publish or PUT (ms),
-- ARGV[8] 'PUBLISH', or 'SPUBLISH' on Redis Cluster (the live channel
-- shares the keys' hash tag, so it belongs to this script's shard).
-- Reply: {duplicate (0|1), offset, epoch}.
--
-- Invariants: offsets are 1, 2, 3… per epoch; a new epoch (history was
-- lost: the meta hash or the history stream expired, deleted, trimmed by
-- someone else, Redis lost data; see channel_head in the prelude) starts
-- from an empty history, so an offset never names two messages under one
-- epoch and no lost message goes unnoticed; the history holds
-- exactly the last history_size messages (exact MAXLEN); meta and history
-- expire history_ttl_ms after the last publish.
local history, meta, config, dedup = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local payload, headers, idem, live = ARGV[1], ARGV[2], ARGV[3] == '1', ARGV[4]

local c = redis.call('HMGET', config, 'history_size', 'history_ttl_ms')
local size = tonumber(c[1] or ARGV[5])
local ttl = tonumber(c[2] or ARGV[6])
if c[1] then
  redis.call('PEXPIRE', config, ARGV[7])
end

if idem then
  local seen = redis.call('GET', dedup)
  if seen then
    local sep = string.find(seen, ' ', 1, true)
    return { 1, string.sub(seen, 1, sep - 1), string.sub(seen, sep + 1) }
  end
end

local now = now_ms()
local epoch, top = channel_head(history, meta, int(ttl), false)
top = top + 1
redis.call('PEXPIRE', meta, int(ttl))
if size > 0 then
  redis.call('HSET', meta, 'epoch', epoch, 'top', int(top), 'kept', int(top))
  redis.call('XADD', history, 'MAXLEN', int(size), int(top) .. '-0',
    'p', payload, 'h', headers, 't', int(now))
  redis.call('PEXPIRE', history, int(ttl))
else
  redis.call('HSET', meta, 'epoch', epoch, 'top', int(top))
  redis.call('HDEL', meta, 'kept')
  redis.call('DEL', history)
end
if idem then
  redis.call('SET', dedup, int(top) .. ' ' .. epoch, 'PX', int(ttl))
end
-- Payload and headers are JSON texts validated by the sidecar; they are
-- spliced in as sent (re-encoding would change numbers).
local command = ARGV[8] == 'SPUBLISH' and 'SPUBLISH' or 'PUBLISH'
redis.call(command, live, '{"epoch":"' .. epoch .. '","offset":' .. int(top) ..
  ',"published_at":' .. int(now) .. ',"headers":' .. headers .. ',"payload":' .. payload .. '}')
return { 0, int(top), epoch }
