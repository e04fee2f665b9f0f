-- publish_dups.lua: which messages of a publish are duplicates of messages
-- already written, without writing anything. Asked when a publish is refused
-- before publish.lua runs (the tenant's quota is spent), so a retried publish
-- still answers as the duplicate it is.
--
-- KEYS[1]  sc:{T:P}:meta    topic config hash (incarnation, dedup_window_ms)
-- KEYS[2…] sc:{T:P}:dedup:<key>, one per message with an idempotency key
-- Returns  { { found (0|1), id, stream_id, seq } per dedup key, in KEYS order }
--
-- Reads the records exactly as publish.lua does: a record of an earlier
-- incarnation of a deleted topic does not count, nor one older than the
-- topic's current dedup window, and an expired one is gone.
local m = redis.call('HMGET', KEYS[1], 'incarnation', 'dedup_window_ms')
local incarnation, window = m[1], tonumber(m[2])
local now = now_ms()
local found = {}
for i = 2, #KEYS do
  local row = { 0, '', '', 0 }
  local record = incarnation and dedup_record(redis.call('GET', KEYS[i]), incarnation, now, window)
  if record then
    row = { 1, record[1], record[2], record[3] }
  end
  found[#found + 1] = row
end
return found
