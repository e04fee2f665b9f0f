-- fetch.lua: hand up to `max` messages of a group to one consumer, each under
-- a fresh lease that starts now.
--
-- KEYS[1]  sc:{T:P}:stream
-- KEYS[2]  sc:{T:P}:g:<G>          group config (lease_ms, max_deliveries, paused)
-- KEYS[3]  sc:{T:P}:g:<G>:delayed  retry schedule: member '<stream id>|<attempts so far>', score due ms
-- KEYS[4]  sc:{T:P}:g:<G>:dlq      dead letters
-- KEYS[5]  sc:{T:P}:meta           topic meta (per-group retry counts)
-- ARGV[1]  group name
-- ARGV[2]  consumer name
-- ARGV[3]  max messages (1..1000)
-- Returns  { status, now_ms, lease_ms, next_wake_ms, deliveries,
--            dead-lettered as expired, dead-lettered as max_deliveries }
--          status 1 ok, 0 paused, -1 no such group; next_wake_ms (only when
--          nothing was delivered) is the earliest scheduled retry or lease
--          expiry among the 100 oldest deliveries (0 = none known);
--          deliveries = { { stream_id, attempt, {fields…} } … }
--
-- Order of preference: due retries, then leases that expired (oldest first),
-- then new entries. On the way, a message whose ttl passed is dead-lettered
-- as `expired`, one whose lease expired on its last allowed attempt as
-- `max_deliveries`, and a new entry published with a delay is parked in the
-- retry schedule until due.
-- Invariants: an entry is in at most one of {PEL, retry schedule}; a live
-- lease (idle < lease_ms) is never handed to a second consumer; every
-- delivery's attempt is its PEL delivery count.
--
-- Cost: most fetches find nothing (long-polls re-checking) or only new
-- entries, so the common path is a handful of O(1) or O(log n) calls and
-- writes nothing. XAUTOCLAIM, which costs ~2 µs per pending entry it passes
-- over (1.5 ms for 800 live leases, measured on Redis 7.0), runs only when a
-- cheap XPENDING IDLE scan has found an expired lease, and starts there.
local stream, config, delayed, dlq, meta = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local group, consumer, max = ARGV[1], ARGV[2], tonumber(ARGV[3])

local cfg = redis.call('HMGET', config, 'lease_ms', 'paused', 'max_deliveries')
if not cfg[1] then
  return { -1, 0, 0, 0, {}, 0, 0 }
end
local lease_ms, max_deliveries = tonumber(cfg[1]), tonumber(cfg[3])
local now = now_ms()

if cfg[2] == '1' then
  return { 0, now, lease_ms, 0, {}, 0, 0 }
end

local out = {}
local expired, exhausted = 0, 0

-- Delivers entry `id` as attempt `attempt`, unless it expired or has used
-- up its deliveries (it is in this consumer's PEL either way).
local function offer(id, attempt, flat)
  local expires_at = entry_fields(flat).expires_at
  if expires_at and tonumber(expires_at) <= now then
    dead_letter(stream, group, dlq, id, flat, 'expired', attempt - 1, 'ttl passed before delivery', now)
    expired = expired + 1
  elseif attempt > max_deliveries then
    dead_letter(stream, group, dlq, id, flat, 'max_deliveries', attempt - 1, 'lease expired without ack', now)
    exhausted = exhausted + 1
  else
    out[#out + 1] = { id, attempt, flat }
  end
end

-- The earliest scheduled retry (0 = none).
local function next_retry()
  local first = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')
  return first[2] and tonumber(first[2]) or 0
end

-- 1. Retries whose time has come: back into the PEL for this consumer.
local retry_at = next_retry()
local due = {}
if retry_at > 0 and retry_at <= now then
  due = redis.call('ZRANGE', delayed, '-inf', now, 'BYSCORE', 'LIMIT', 0, max)
end
local schedule_changed = #due > 0
for _, member in ipairs(due) do
  redis.call('ZREM', delayed, member)
  local id, attempts = string.match(member, '^([^|]+)|(%d+)$')
  local attempt = tonumber(attempts) + 1
  local claimed = redis.call('XCLAIM', stream, group, consumer, 0, id, 'FORCE', 'RETRYCOUNT', attempt)
  if claimed[1] and claimed[1][2] then
    offer(id, attempt, claimed[1][2])
  end
end

-- 2. Expired leases of any consumer, oldest first.
local in_flight = redis.call('XPENDING', stream, group)[1]
local oldest_expired = nil
if #out < max and in_flight > 0 then
  oldest_expired = redis.call('XPENDING', stream, group, 'IDLE', lease_ms, '-', '+', 1)[1]
end
if oldest_expired then
  -- Redis reads PEL idle times off its clock when XAUTOCLAIM runs, a little
  -- after `now`, the start reported to the new holder. A lease only counts
  -- as expired once idle for lease_ms plus that gap and 1 ms of rounding, so
  -- a new holder's reported start is never before the old holder's
  -- reported expiry.
  local min_idle = lease_ms + (now_ms() - now) + 1
  local reply = redis.call('XAUTOCLAIM', stream, group, consumer, min_idle, oldest_expired[1],
    'COUNT', max - #out)
  for _, entry in ipairs(reply[2]) do
    local info = redis.call('XPENDING', stream, group, entry[1], entry[1], 1)
    offer(entry[1], info[1][4], entry[2])
  end
end

-- 3. New entries; delayed ones are parked, so read on (bounded) to fill up.
local budget = 1000
while #out < max and budget > 0 do
  local reply = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', max - #out,
    'STREAMS', stream, '>')
  if not reply then
    break
  end
  local entries = reply[1][2]
  budget = budget - #entries
  for _, entry in ipairs(entries) do
    local deliver_at = tonumber(entry_fields(entry[2]).deliver_at or 0)
    if deliver_at > now then
      redis.call('XACK', stream, group, entry[1])
      redis.call('ZADD', delayed, deliver_at, entry[1] .. '|0')
      schedule_changed = true
    else
      offer(entry[1], 1, entry[2])
    end
  end
end

if schedule_changed then
  note_delayed(meta, group, delayed)
end

-- When a waiting fetch should look again: the next retry or lease expiry.
-- (With nothing delivered, the PEL can only have shrunk since `in_flight`.)
local wake = 0
if #out == 0 then
  wake = schedule_changed and next_retry() or retry_at
  if in_flight > 0 then
    for _, p in ipairs(redis.call('XPENDING', stream, group, '-', '+', 100)) do
      local expiry = now + lease_ms + 1 - p[3]
      if wake == 0 or expiry < wake then
        wake = expiry
      end
    end
  end
end
return { 1, now, lease_ms, wake, out, expired, exhausted }
