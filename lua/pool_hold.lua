-- pool_hold.lua: renew or release a live reservation.
--
-- KEYS[1]  sc:{T}:pool:<P>          pool hash
-- KEYS[2]  sc:{T}:pool:<P>:holders  zset reservation id → expires_at
-- ARGV[1]  'renew' or 'release'
-- ARGV[2]  reservation id
-- ARGV[3]  lease ms for renew (0 = the pool's)
-- ARGV[4]  pub/sub channel that wakes waiting acquirers (release)
-- Returns  { 1, expires_at (0 for release), in_use } done, { 0, in_use } the
--          reservation is not live (expired, released or unknown), { -1 } no such pool
--
-- Invariant: an expired reservation stays expired: it cannot be renewed
-- back to life after its slot may have gone to someone else.
local pool, holders = KEYS[1], KEYS[2]
local lease_ms = redis.call('HGET', pool, 'lease_ms')
if not lease_ms then
  return { -1 }
end
local now = now_ms()
local freed = release_expired(pool, holders, now)
local id = ARGV[2]
local expires_at = redis.call('ZSCORE', holders, id)
if not expires_at or tonumber(expires_at) <= now then
  if freed > 0 then
    redis.call('PUBLISH', ARGV[4], 0)
  end
  return { 0, live_holders(holders, now) }
end
if ARGV[1] == 'release' then
  redis.call('ZREM', holders, id)
  redis.call('HDEL', pool, 'r:' .. id)
  redis.call('PUBLISH', ARGV[4], 0)
  return { 1, 0, live_holders(holders, now) }
end
local lease = tonumber(ARGV[3])
if lease <= 0 then
  lease = tonumber(lease_ms)
end
redis.call('ZADD', holders, now + lease, id)
return { 1, now + lease, live_holders(holders, now) }
