-- pool_acquire.lua: take a slot of a pool if one is free.
--
-- KEYS[1]  sc:{T}:pool:<P>          pool hash (capacity, lease_ms, fence, r:<id>)
-- KEYS[2]  sc:{T}:pool:<P>:holders  zset reservation id → expires_at
-- ARGV[1]  holder (free text)
-- ARGV[2]  lease ms (0 = the pool's)
-- ARGV[3]  new reservation id
-- Returns  { 1, reservation_id, fencing_token, expires_at, in_use } acquired
--          { 0, '', earliest expiry among holders, now, in_use } full
--          { -1, '', 0, 0, 0 } no such pool
--
-- Invariants: never more live holders than capacity; expired holders free
-- their slot first; fencing tokens strictly increase per pool.
local pool, holders = KEYS[1], KEYS[2]
local cfg = redis.call('HMGET', pool, 'capacity', 'lease_ms')
if not cfg[1] then
  return { -1, '', 0, 0, 0 }
end
local now = now_ms()
release_expired(pool, holders, now)
local in_use = live_holders(holders, now)
if in_use >= tonumber(cfg[1]) then
  local first = redis.call('ZRANGE', holders, '(' .. int(now), '+inf', 'BYSCORE', 'LIMIT', 0, 1,
    'WITHSCORES')
  return { 0, '', tonumber(first[2] or now), now, in_use }
end
local lease = tonumber(ARGV[2])
if lease <= 0 then
  lease = tonumber(cfg[2])
end
local fence = redis.call('HINCRBY', pool, 'fence', 1)
local expires_at = now + lease
redis.call('ZADD', holders, expires_at, ARGV[3])
-- Tokens are ~16 digits (see pool_declare.lua): formatted as an integer,
-- since tostring would print a Lua number that large in exponent form.
redis.call('HSET', pool, 'r:' .. ARGV[3], ARGV[1] .. '|' .. string.format('%d', fence))
return { 1, ARGV[3], fence, expires_at, in_use + 1 }
