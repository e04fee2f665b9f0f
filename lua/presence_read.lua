-- presence_read.lua: who is connected to a channel, across sidecars.
--
-- KEYS[1] sc:ch:{T:C}:presence        zset  '<sidecar>|<sub>' → expires_at (ms)
-- KEYS[2] sc:ch:{T:C}:presence:conns  hash  '<sidecar>|<sub>' → connections
-- ARGV[1] most entries to return
-- Returns a flat list: member, connections, member, connections, …
--
-- Read-only. Only entries whose sidecar beat within the TTL (Redis clock)
-- count, so a killed sidecar's clients are gone once their TTL passes even
-- before any beat prunes them.
local now = now_ms()
local members = redis.call('ZRANGE', KEYS[1], '(' .. int(now), '+inf', 'BYSCORE', 'LIMIT', 0,
  tonumber(ARGV[1]))
local out = {}
for _, member in ipairs(members) do
  out[#out + 1] = member
  out[#out + 1] = redis.call('HGET', KEYS[2], member) or '0'
end
return out
