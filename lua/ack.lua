-- ack.lua: acknowledge deliveries, refusing receipts whose lease was lost.
--
-- KEYS[1]  sc:{T:P}:stream
-- KEYS[2]  sc:{T:P}:g:<G>  group config (existence check)
-- ARGV[1]  group name, then triples: stream id, attempt, consumer
-- Returns  { status, now_ms, { { 1, published_at, id, correlation_id, causation_id }
--            acked | { 0 } lease_lost … } }, status 1 ok, -1 no such group
--
-- Invariant (fencing): a receipt acks only while its delivery is current:
-- the PEL entry exists, is owned by the receipt's consumer and has the
-- receipt's delivery count. A worker whose lease expired and whose message
-- went to someone else learns lease_lost and must not commit.
if redis.call('EXISTS', KEYS[2]) == 0 then
  return { -1, 0, {} }
end
local stream, group = KEYS[1], ARGV[1]
local now = now_ms()
local out = {}
for i = 2, #ARGV, 3 do
  local id, attempt, consumer = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  if is_current(stream, group, id, attempt, consumer) then
    local entry = redis.call('XRANGE', stream, id, id)[1]
    local f = entry and entry_fields(entry[2]) or {}
    redis.call('XACK', stream, group, id)
    out[#out + 1] = { 1, tonumber(f.published_at or 0), f.id or '', f.correlation_id or '', f.causation_id or '' }
  else
    out[#out + 1] = { 0 }
  end
end
return { 1, now, out }
