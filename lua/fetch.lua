-- fetch.lua: hand up to `max` messages of a group to one consumer, each under
-- a fresh lease that starts now.
--
-- KEYS[1..10]  the group keys (prelude.lua `group_keys`)
-- ARGV[1]  group name
-- ARGV[2]  the topic's wake-up channel
-- ARGV[3]  consumer name
-- ARGV[4]  max messages (1..1000)
-- ARGV[5]  max bytes: stop before a message that would take the answer's
--          field bytes past this (the first message always goes)
-- ARGV[6…] receipts to ack first, as ack.lua takes them (fetch with `ack`:
--          one round trip per message for a worker that handles one at a
--          time); acked even when the group is paused
-- Returns  { status, now_ms, lease_ms, next_wake_ms, deliveries,
--            dead-lettered as expired, dead-lettered as max_deliveries,
--            more (0|1): stopped at the byte budget or the read bound with
--            more maybe waiting, ack results as ack.lua returns them }
--          status 1 ok, 0 paused, -1 no such group; next_wake_ms (only when
--          nothing was delivered) is the earliest scheduled retry or lease
--          expiry (0 = none); deliveries = { { stream_id, attempt, {fields…},
--          delivery number } … }
--
-- Order of preference: due retries, then leases that expired (oldest first),
-- then new entries. On the way, a message whose ttl passed is dead-lettered
-- as `expired`, one whose lease expired on its last allowed attempt as
-- `max_deliveries`, and a new entry published with a delay is parked in the
-- retry schedule until due. In an ordered group (`ordering: key`) a new
-- entry whose key already has a message in progress is parked behind it
-- (prelude.lua `take_key`); finishing the head passes the key on.
--
-- Invariants: every entry the group has started and not finished is in the
-- PEL and in exactly one of {lease set, retry schedule}; a lease is handed to
-- someone else only after the expiry its holder was told (the lease set
-- stores that promise, so changing the group's lease_ms never shortens a
-- lease already granted); each delivery gets a new number from the topic's
-- counter, so its receipt names it alone, forever.
--
-- Cost: O(log n) per delivered or reclaimed entry; finding expired leases
-- and the next wake-up are range reads on the lease set, never a PEL scan.
local g = group_keys()
local consumer, max, max_bytes = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])

local cfg = redis.call('HMGET', g.config, 'lease_ms', 'paused', 'max_deliveries')
if not cfg[1] then
  return { -1, 0, 0, 0, {}, 0, 0, 0, {} }
end
local lease_ms, max_deliveries = tonumber(cfg[1]), tonumber(cfg[3])
local acks = ack_receipts(g, 6)
-- Read after the acks: a key an ack passed on has its next message due at
-- the Redis time of that ack, and this fetch must see it as due.
local now = now_ms()

if cfg[2] == '1' then
  return { 0, now, lease_ms, 0, {}, 0, 0, 0, acks }
end

local out = {}
local expired, exhausted = 0, 0
local bytes, budget_hit = 0, false

-- True if an entry with fields `flat` still fits the byte budget (counted
-- as taken); the first entry always fits.
local function fits(flat)
  local size = 0
  for i = 1, #flat do
    size = size + #flat[i]
  end
  if #out > 0 and bytes + size > max_bytes then
    budget_hit = true
    return false
  end
  bytes = bytes + size
  return true
end

-- Delivers entry `id` (already in the PEL for this consumer with delivery
-- count `attempt`) under a new lease, unless it expired or has used up its
-- deliveries (then `last_error` is the dead letter's, by default a lease
-- that expired).
local function offer(id, attempt, flat, last_error)
  local expires_at = entry_fields(flat).expires_at
  if expires_at and tonumber(expires_at) <= now then
    dead_letter(g, id, flat, 'expired', attempt - 1, 'ttl passed before delivery', now)
    expired = expired + 1
  elseif attempt > max_deliveries then
    dead_letter(g, id, flat, 'max_deliveries', attempt - 1,
      last_error or 'lease expired without ack', now)
    exhausted = exhausted + 1
  else
    local delivery = redis.call('HINCRBY', g.meta, 'deliveries', 1)
    redis.call('ZADD', g.leases, int(now + lease_ms), id)
    redis.call('HSET', g.deliveries, id, int(attempt) .. ':' .. int(delivery))
    out[#out + 1] = { id, attempt, flat, delivery }
  end
end

-- The entry's fields, or nil when it no longer exists (then the group is
-- done with it).
local function read_entry(id)
  local found = redis.call('XRANGE', g.stream, id, id)[1]
  if not found then
    finish(g, id, nil)
    return nil
  end
  return found[2]
end

-- Delivery numbers come from a counter in the topic's meta that starts at
-- the Redis clock in microseconds: a topic deleted and declared again never
-- reissues a number (it would need over a million deliveries a second).
if redis.call('HEXISTS', g.meta, 'deliveries') == 0 then
  local t = redis.call('TIME')
  redis.call('HSET', g.meta, 'deliveries', t[1] .. string.format('%06d', tonumber(t[2])))
end

-- 0. Deferred DLQ replays the group has read past (prelude.lua
-- `defer_replay`) join their key, so a free key's replay is due now.
if g.ordered and first_deferred(g) then
  local last = last_delivered(g)
  if last then
    release_deferred(g, sortable_id(last) .. '~', now)
  end
end

-- 1. Retries whose time (up to `due`) has come: this consumer takes them over.
local function take_due(due)
  for _, member in ipairs(redis.call('ZRANGE', g.delayed, '-inf', int(due), 'BYSCORE', 'LIMIT', 0,
    max - #out)) do
    local id, attempts = string.match(member, '^([^|]+)|(%d+)$')
    local flat = read_entry(id)
    if flat and not fits(flat) then
      break
    end
    redis.call('ZREM', g.delayed, member)
    if flat then
      local attempt = tonumber(attempts) + 1
      -- For a retry that has used up its deliveries (max_deliveries
      -- lowered since it was scheduled): the error its final nack gave
      -- (nack.lua), or none; it never had a lease that expired.
      local nacked = string.match(redis.call('HGET', g.deliveries, id) or '', '^~(.*)$')
      redis.call('XCLAIM', g.stream, g.name, consumer, 0, id, 'RETRYCOUNT', attempt, 'JUSTID')
      offer(id, attempt, flat, nacked or '')
    end
  end
end
take_due(now)

-- 2. Leases whose promised expiry has passed, oldest first. Leases of one
-- expiry come back in member order, which is not stream order when their
-- ids' sequence parts differ in length ('T-10' before 'T-9'): sorted by
-- expiry, then stream id.
if #out < max and not budget_hit then
  local scored = redis.call('ZRANGE', g.leases, '-inf', '(' .. int(now), 'BYSCORE', 'LIMIT', 0,
    max - #out, 'WITHSCORES')
  local lapsed, expiry = {}, {}
  for i = 1, #scored, 2 do
    lapsed[#lapsed + 1] = scored[i]
    expiry[scored[i]] = tonumber(scored[i + 1])
  end
  table.sort(lapsed, function(a, b)
    if expiry[a] ~= expiry[b] then
      return expiry[a] < expiry[b]
    end
    return sortable_id(a) < sortable_id(b)
  end)
  for _, id in ipairs(lapsed) do
    local flat = read_entry(id)
    if flat then
      if not fits(flat) then
        break
      end
      local pending = redis.call('XPENDING', g.stream, g.name, id, id, 1)[1]
      if pending then
        local attempt = pending[4] + 1
        redis.call('XCLAIM', g.stream, g.name, consumer, 0, id, 'RETRYCOUNT', attempt, 'JUSTID')
        offer(id, attempt, flat)
      else
        -- Not in the PEL: nothing to hand over (cannot happen while the
        -- scripts keep their invariant; repair rather than loop on it).
        redis.call('ZREM', g.leases, id)
        redis.call('HDEL', g.deliveries, id)
      end
    end
  end
end

-- In an ordered group, a head dead-lettered above (ttl passed, last attempt
-- lapsed) passed its key on: the next message, due now, goes out in this
-- same fetch (bounded), rather than after an empty answer per dead head.
local dead, passes = 0, 100
while g.ordered and expired + exhausted > dead and #out < max and not budget_hit and passes > 0 do
  dead, passes = expired + exhausted, passes - 1
  take_due(now_ms())
end

-- 3. New entries. Delayed ones are parked until due, and entries read past
-- the byte budget are parked as due now (first in line next time); read on
-- (bounded) to fill up.
-- Deferred DLQ replays join their key once the read passes the stream top
-- they were replayed at (prelude.lua `defer_replay`).
local reads = 1000
local deferred = g.ordered and first_deferred(g)
local caught_up = false
local last_read = nil
while #out < max and not budget_hit and reads > 0 do
  local reply = redis.call('XREADGROUP', 'GROUP', g.name, consumer, 'COUNT', max - #out,
    'STREAMS', g.stream, '>')
  if not reply then
    caught_up = true
    break
  end
  local entries = reply[1][2]
  reads = reads - #entries
  last_read = entries[#entries][1]
  for _, entry in ipairs(entries) do
    if deferred and deferred < sortable_id(entry[1]) then
      release_deferred(g, sortable_id(entry[1]), now)
      deferred = first_deferred(g)
    end
    local f = entry_fields(entry[2])
    local key = order_key(g, f)
    local deliver_at = tonumber(f.deliver_at or 0)
    if key and not take_key(g, key, entry[1]) then
      -- Parked behind the message of its key in progress.
    elseif deliver_at > now then
      schedule(g, entry[1], 0, deliver_at)
    elseif budget_hit or not fits(entry[2]) then
      schedule(g, entry[1], 0, now)
    else
      offer(entry[1], 1, entry[2])
    end
  end
end
if last_read then
  -- XREADGROUP moved the group's last-delivered id (prelude.lua
  -- `last_delivered`): its copy is written once per fetch.
  redis.call('HSET', g.config, 'last_delivered', last_read)
end
if deferred and caught_up then
  release_deferred(g, nil, now)
end
local more = budget_hit or (reads <= 0 and #out < max)

-- When a waiting fetch should look again: the next retry or lease expiry.
local wake = 0
if #out == 0 then
  local first = redis.call('ZRANGE', g.delayed, 0, 0, 'WITHSCORES')
  if first[2] then
    wake = tonumber(first[2])
  end
  first = redis.call('ZRANGE', g.leases, 0, 0, 'WITHSCORES')
  if first[2] then
    local expiry = tonumber(first[2]) + 1
    if wake == 0 or expiry < wake then
      wake = expiry
    end
  end
end
return { 1, now, lease_ms, wake, out, expired, exhausted, more and 1 or 0, acks }
