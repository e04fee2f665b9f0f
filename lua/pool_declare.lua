-- pool_declare.lua: create a reservation pool or change its capacity/lease.
--
-- KEYS[1]  sc:{T}:pool:<P>          hash: capacity, lease_ms, fence, r:<reservation id>
-- KEYS[2]  sc:{T}:pool:<P>:holders  zset reservation id → expires_at
-- ARGV[1]  capacity
-- ARGV[2]  default lease ms
-- Returns  { 1 created or 0 updated, the pool as pool_info.lua describes it }
--          (in the same call: a delete right after cannot make the declare
--          answer that the pool does not exist)
--
-- Invariant: fencing tokens strictly increase per pool name, forever. The
-- counter survives updates; a pool created (again, after a delete) starts it
-- at the Redis clock in microseconds, above every token an earlier pool of
-- that name handed out: one acquire per microsecond is more than a pool can
-- take (each acquire is a script call of its own on Redis's one thread).
-- The digits are joined as text, never through a Lua number.
local created = redis.call('EXISTS', KEYS[1]) == 0 and 1 or 0
redis.call('HSET', KEYS[1], 'capacity', ARGV[1], 'lease_ms', ARGV[2])
if created == 1 then
  local t = redis.call('TIME')
  redis.call('HSET', KEYS[1], 'fence', t[1] .. string.format('%06d', tonumber(t[2])))
end
return { created, describe_pool(KEYS[1], KEYS[2]) }
