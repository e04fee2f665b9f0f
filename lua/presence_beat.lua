-- presence_beat.lua: one sidecar's heartbeat for the edge clients it holds
-- on one channel.
--
-- KEYS[1] sc:ch:{T:C}:presence        zset  '<sidecar>|<sub>' → expires_at (ms)
-- KEYS[2] sc:ch:{T:C}:presence:conns  hash  '<sidecar>|<sub>' → connections
-- ARGV[1] ttl_ms, ARGV[2] sidecar id (no '|'), then pairs: sub, connections
--         (0 = the sub left this sidecar: its entry goes).
-- Returns the number of live entries after the beat.
--
-- Invariant: an entry lives at most ttl_ms past its sidecar's last beat,
-- so a killed sidecar's clients vanish within the TTL; entries of dead
-- sidecars are dropped here (at most 1000 per call, the rest by later
-- beats or with the keys, which expire ttl_ms after the last beat of any
-- sidecar). Time is the Redis clock.
local now = now_ms()
local ttl = tonumber(ARGV[1])
local expires = int(now + ttl)
local gone = redis.call('ZRANGE', KEYS[1], '-inf', int(now), 'BYSCORE', 'LIMIT', 0, 1000)
for _, member in ipairs(gone) do
  redis.call('ZREM', KEYS[1], member)
  redis.call('HDEL', KEYS[2], member)
end
for i = 3, #ARGV - 1, 2 do
  local member = ARGV[2] .. '|' .. ARGV[i]
  local connections = tonumber(ARGV[i + 1])
  if connections and connections > 0 then
    redis.call('ZADD', KEYS[1], expires, member)
    redis.call('HSET', KEYS[2], member, int(connections))
  else
    redis.call('ZREM', KEYS[1], member)
    redis.call('HDEL', KEYS[2], member)
  end
end
local live = redis.call('ZCARD', KEYS[1])
if live == 0 then
  redis.call('DEL', KEYS[1], KEYS[2])
else
  redis.call('PEXPIRE', KEYS[1], int(ttl))
  redis.call('PEXPIRE', KEYS[2], int(ttl))
end
return live
