-- rate_limit.lua: a tenant's publish quota, GCRA (generic cell rate
-- algorithm: a leaky bucket kept as one "theoretical arrival time").
--
-- KEYS[1]  sc:{T}:rate  hash: publish_per_sec, burst, tat (ms, fractional)
-- ARGV[1]  cost: messages in this publish
-- Returns  { status, retry_after_ms, remaining, reset_ms, limit }
--          status 1 allowed, 0 refused (nothing counted), 2 no limit set,
--          -1 cost larger than the burst (can never pass)
--
-- Invariant: over any window, allowed messages ≤ burst + rate × window;
-- a refused call changes nothing, so refusals never make a tenant wait longer.
local cfg = redis.call('HMGET', KEYS[1], 'publish_per_sec', 'burst', 'tat')
if not cfg[1] then
  return { 2, 0, 0, 0, 0 }
end
local rate, burst, cost = tonumber(cfg[1]), tonumber(cfg[2]), tonumber(ARGV[1])
if cost > burst then
  return { -1, 0, 0, 0, burst }
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local interval = 1000 / rate
local tat = math.max(tonumber(cfg[3] or 0), now)
local new_tat = tat + interval * cost
local allow_at = new_tat - interval * burst
if now < allow_at then
  local remaining = math.max(0, math.floor((now + interval * burst - tat) / interval))
  return { 0, math.ceil(allow_at - now), remaining, math.ceil(tat - now), burst }
end
redis.call('HSET', KEYS[1], 'tat', tostring(new_tat))
local remaining = math.floor((now + interval * burst - new_tat) / interval)
return { 1, 0, remaining, math.ceil(new_tat - now), burst }
