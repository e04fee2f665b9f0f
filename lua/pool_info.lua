-- pool_info.lua: describe a pool and its live holders.
--
-- KEYS[1]  sc:{T}:pool:<P>          pool hash
-- KEYS[2]  sc:{T}:pool:<P>:holders  zset reservation id → expires_at
-- Returns  { capacity, lease_ms, { { reservation_id, holder|fence, expires_at } … } },
--          or { -1 } when the pool does not exist
--
-- Frees expired holders first, so what it reports is what acquire sees.
local pool, holders = KEYS[1], KEYS[2]
local cfg = redis.call('HMGET', pool, 'capacity', 'lease_ms')
if not cfg[1] then
  return { -1 }
end
release_expired(pool, holders, now_ms())
local out = {}
local live = redis.call('ZRANGE', holders, 0, -1, 'WITHSCORES')
for i = 1, #live, 2 do
  out[#out + 1] = { live[i], redis.call('HGET', pool, 'r:' .. live[i]), tonumber(live[i + 1]) }
end
return { tonumber(cfg[1]), tonumber(cfg[2]), out }
