-- ack.lua: acknowledge deliveries, refusing receipts whose lease was lost.
--
-- KEYS[1..10]  the group keys (prelude.lua `group_keys`)
-- ARGV[1]  group name
-- ARGV[2]  the topic's wake-up channel (an ordered group's next message)
-- ARGV[3…] pairs: stream id, '<attempt>:<delivery>'
-- Returns  { status, now_ms, { { 1, published_at, id, correlation_id, causation_id,
--            traceparent ('' = none) } acked | { 0 } lease_lost … } },
--          status 1 ok, -1 no such group
--
-- Invariant (fencing): a receipt acks only while its delivery is current:
-- the group's deliveries hash still holds that delivery for the entry. A
-- worker whose lease expired and whose message went to someone else learns
-- lease_lost and must not commit. (A lapsed lease nobody has taken over yet
-- is still current: the holder's work is not wasted.)
local g = group_keys()
if redis.call('EXISTS', g.config) == 0 then
  return { -1, 0, {} }
end
return { 1, now_ms(), ack_receipts(g, 3) }
