-- extend.lua: renew the leases of current deliveries (worker heartbeat).
--
-- KEYS[1..10]  the group keys (prelude.lua `group_keys`)
-- ARGV[1]  group name
-- ARGV[2]  the topic's wake-up channel (unused)
-- ARGV[3]  new lease length in ms (0 = the group's lease_ms; at most lease_ms)
-- ARGV[4…] pairs: stream id, '<attempt>:<delivery>'
-- Returns  { status, group lease_ms, { lease_expires_at ms | 0 lease_lost … } }
--          status 1 ok, -1 no such group, -2 new lease longer than lease_ms
--
-- A lease is the entry's score in the lease set: the expiry its holder was
-- told. Renewing sets it to now + the new length; the receipt stays valid.
local g = group_keys()
local lease_ms = tonumber(redis.call('HGET', g.config, 'lease_ms'))
if not lease_ms then
  return { -1, 0, {} }
end
local new_lease = tonumber(ARGV[3])
if new_lease > lease_ms then
  return { -2, lease_ms, {} }
end
if new_lease <= 0 then
  new_lease = lease_ms
end
local now = now_ms()
local out = {}
for i = 4, #ARGV, 2 do
  local id = ARGV[i]
  if is_current(g, id, ARGV[i + 1]) then
    redis.call('ZADD', g.leases, int(now + new_lease), id)
    out[#out + 1] = now + new_lease
  else
    out[#out + 1] = 0
  end
end
return { 1, lease_ms, out }
