-- publish_dups.lua: which messages of a publish are duplicates of messages
-- already written, without writing anything. Asked when a publish is refused
-- before publish.lua runs (the tenant's quota is spent), so a retried publish
-- still answers as the duplicate it is.
--
-- KEYS[1]  sc:{T:P}:meta    topic config hash (incarnation)
-- KEYS[2…] sc:{T:P}:dedup:<key>, one per message with an idempotency key
-- Returns  { { found (0|1), id, stream_id, seq } per dedup key, in KEYS order }
--
-- Reads the records exactly as publish.lua does: a record of an earlier
-- incarnation of a deleted topic does not count, and an expired one is gone.
local incarnation = redis.call('HGET', KEYS[1], 'incarnation')
local found = {}
for i = 2, #KEYS do
  local row = { 0, '', '', 0 }
  local record = incarnation and redis.call('GET', KEYS[i])
  if record then
    local inc, pid, psid, pseq = string.match(record, '^([^\n]*)\n([^\n]*)\n([^\n]*)\n([^\n]*)$')
    if inc == incarnation then
      row = { 1, pid, psid, pseq }
    end
  end
  found[#found + 1] = row
end
return found
