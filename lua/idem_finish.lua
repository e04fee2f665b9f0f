-- idem_finish.lua: end a claim, either storing its result (complete) or
-- freeing the key for a retry (release).
--
-- KEYS[1]  sc:{T}:idem:<key>
-- ARGV[1]  'complete' or 'release'
-- ARGV[2]  the claim's token
-- ARGV[3]  result JSON (complete only)
-- ARGV[4]  result ttl ms (complete only)
-- Returns  { 1, completed_at (0 for release) } done, or { 0 } when the token
--          is not the live claim's (stale, taken over, expired or forged)
--
-- Invariant (fencing): only the holder of the live claim can finish it.
local key = KEYS[1]
local now = now_ms()
local h = redis.call('HMGET', key, 'state', 'token', 'expires_at')
if h[1] ~= 'in_progress' or h[2] ~= ARGV[2] or tonumber(h[3]) <= now then
  return { 0 }
end
if ARGV[1] == 'release' then
  redis.call('DEL', key)
  return { 1, 0 }
end
redis.call('HDEL', key, 'token', 'expires_at')
redis.call('HSET', key, 'state', 'completed', 'result', ARGV[3], 'completed_at', now)
redis.call('PEXPIRE', key, ARGV[4])
return { 1, now }
