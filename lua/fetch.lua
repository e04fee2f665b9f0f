-- fetch.lua: hand up to `max` messages of a group to one consumer, each under
-- a fresh lease that starts now.
--
-- KEYS[1]  sc:{T:P}:stream
-- KEYS[2]  sc:{T:P}:g:<G>          group config (lease_ms, paused, reclaim_cursor)
-- KEYS[3]  sc:{T:P}:g:<G>:delayed  retry schedule: member '<stream id>|<attempts so far>', score due ms
-- ARGV[1]  group name
-- ARGV[2]  consumer name
-- ARGV[3]  max messages (1..1000)
-- Returns  { status, now_ms, lease_ms, next_wake_ms, pending, deliveries }
--          status 1 ok, 0 paused, -1 no such group; next_wake_ms (only when
--          nothing was delivered) is the earliest scheduled retry or lease
--          expiry among the 100 oldest deliveries (0 = none known); pending is
--          the group's PEL size; deliveries = { { stream_id, attempt, {fields…} } … }
--
-- Order of preference: due retries, then leases that expired (XAUTOCLAIM with
-- min-idle = lease_ms, resuming from the stored cursor), then new entries.
-- Invariants: an entry is in at most one of {PEL, retry schedule}; a live
-- lease (idle < lease_ms) is never handed to a second consumer; every
-- delivery's attempt is its PEL delivery count.
local stream, config, delayed = KEYS[1], KEYS[2], KEYS[3]
local group, consumer, max = ARGV[1], ARGV[2], tonumber(ARGV[3])

local cfg = redis.call('HMGET', config, 'lease_ms', 'paused', 'reclaim_cursor')
if not cfg[1] then
  return { -1, 0, 0, 0, 0, {} }
end
local lease_ms = tonumber(cfg[1])
local now = now_ms()

-- When a waiting fetch should look again: the next retry or lease expiry.
local function next_wake()
  local first = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')
  local wake = first[2] and tonumber(first[2]) or 0
  for _, p in ipairs(redis.call('XPENDING', stream, group, '-', '+', 100)) do
    local expiry = now + lease_ms - p[3]
    if wake == 0 or expiry < wake then
      wake = expiry
    end
  end
  return wake
end

local function pending()
  return redis.call('XPENDING', stream, group)[1]
end

if cfg[2] == '1' then
  return { 0, now, lease_ms, 0, pending(), {} }
end

local out = {}

-- 1. Retries whose time has come: back into the PEL for this consumer.
local due = redis.call('ZRANGE', delayed, '-inf', now, 'BYSCORE', 'LIMIT', 0, max)
for _, member in ipairs(due) do
  redis.call('ZREM', delayed, member)
  local id, attempts = string.match(member, '^([^|]+)|(%d+)$')
  local claimed = redis.call('XCLAIM', stream, group, consumer, 0, id,
    'FORCE', 'RETRYCOUNT', tonumber(attempts) + 1)
  if claimed[1] and claimed[1][2] then
    out[#out + 1] = { id, tonumber(attempts) + 1, claimed[1][2] }
  end
end

-- 2. Expired leases of any consumer.
if #out < max then
  local cursor = cfg[3] or '0-0'
  local reply = redis.call('XAUTOCLAIM', stream, group, consumer, lease_ms, cursor,
    'COUNT', max - #out)
  redis.call('HSET', config, 'reclaim_cursor', reply[1])
  for _, entry in ipairs(reply[2]) do
    local info = redis.call('XPENDING', stream, group, entry[1], entry[1], 1)
    out[#out + 1] = { entry[1], info[1][4], entry[2] }
  end
end

-- 3. New entries.
if #out < max then
  local reply = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', max - #out,
    'STREAMS', stream, '>')
  if reply then
    for _, entry in ipairs(reply[1][2]) do
      out[#out + 1] = { entry[1], 1, entry[2] }
    end
  end
end

local wake = 0
if #out == 0 then
  wake = next_wake()
end
return { 1, now, lease_ms, wake, pending(), out }
