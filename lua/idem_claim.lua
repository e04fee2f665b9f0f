-- idem_claim.lua: claim an idempotency key before running its work.
--
-- KEYS[1]  sc:{T}:idem:<key>  hash: state, owner, token, expires_at, result, completed_at
-- ARGV[1]  claim ttl ms
-- ARGV[2]  owner (free text shown to others)
-- ARGV[3]  token for this claim (fresh, random)
-- Returns  { 1, token, expires_at }            claimed: run the work
--          { 2, result, completed_at }         completed before: replay the result
--          { 3, owner, expires_at }            someone else holds a live claim
--
-- Invariants: at most one live claim per key; a claim whose time passed can
-- be taken over (new token), after which the old token is refused; a
-- completed result is returned, never re-run, until its ttl ends.
local key = KEYS[1]
local now = now_ms()
local h = redis.call('HMGET', key, 'state', 'owner', 'expires_at', 'result', 'completed_at')
if h[1] == 'completed' then
  return { 2, h[4], tonumber(h[5]) }
end
if h[1] == 'in_progress' and tonumber(h[3]) > now then
  return { 3, h[2], tonumber(h[3]) }
end
local expires_at = now + tonumber(ARGV[1])
redis.call('DEL', key)
redis.call('HSET', key, 'state', 'in_progress', 'owner', ARGV[2], 'token', ARGV[3], 'expires_at', expires_at)
redis.call('PEXPIREAT', key, expires_at)
return { 1, ARGV[3], expires_at }
