-- extend.lua: renew the leases of current deliveries (worker heartbeat).
--
-- KEYS[1]  sc:{T:P}:stream
-- KEYS[2]  sc:{T:P}:g:<G>  group config (lease_ms)
-- ARGV[1]  group name
-- ARGV[2]  new lease length in ms (0 = the group's lease_ms; at most lease_ms)
-- ARGV[3…] triples: stream id, attempt, consumer
-- Returns  { status, group lease_ms, { lease_expires_at ms | 0 lease_lost … } }
--          status 1 ok, -1 no such group, -2 new lease longer than lease_ms
--
-- A lease is the PEL entry's idle time staying below the group's lease_ms
-- (that is what XAUTOCLAIM reclaims on). Renewing sets idle to
-- lease_ms - new_lease, so the entry becomes reclaimable exactly new_lease ms
-- from now; JUSTID keeps the delivery count, so the receipt stays valid.
local lease_ms = tonumber(redis.call('HGET', KEYS[2], 'lease_ms'))
if not lease_ms then
  return { -1, 0, {} }
end
local stream, group = KEYS[1], ARGV[1]
local new_lease = tonumber(ARGV[2])
if new_lease > lease_ms then
  return { -2, lease_ms, {} }
end
if new_lease <= 0 then
  new_lease = lease_ms
end
local now = now_ms()
local out = {}
for i = 3, #ARGV, 3 do
  local id, attempt, consumer = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  if is_current(stream, group, id, attempt, consumer) then
    redis.call('XCLAIM', stream, group, consumer, 0, id, 'IDLE', lease_ms - new_lease, 'JUSTID')
    out[#out + 1] = now + new_lease
  else
    out[#out + 1] = 0
  end
end
return { 1, lease_ms, out }
