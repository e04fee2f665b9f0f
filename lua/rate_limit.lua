-- rate_limit.lua: a tenant's publish quota, GCRA (generic cell rate
-- algorithm: a leaky bucket kept as one "theoretical arrival time", TAT).
--
-- KEYS[1]  sc:{T}:rate  hash: publish_per_sec, burst, epoch (config, written
--          by the sidecar in one HSET); tat_us, tat_frac, tat_rate, shift,
--          charges (state)
-- KEYS[2]  sc:{T}:rate:refunds  (refunds only) zset of recent refunds:
--          score = the refunded charge's number, member
--          '<epoch>:<number>:<units given back>'
-- ARGV[1]  'charge': ARGV[2] = cost, the messages of this publish.
--          'refund': give back what a charge paid for and the publish did not
--          write: ARGV[2] = how many messages, ARGV[3..8] = the charge's
--          receipt (tat_us, tat_frac, rate, shift, epoch, number).
-- Returns  { status, retry_after_ms, remaining, reset_ms, limit,
--            tat_us, tat_frac, rate, shift, epoch, number }
--          status 1 allowed (charged; after a refund: done), 0 refused
--          (nothing counted), 2 no limit set, -1 cost larger than the burst
--          (can never pass). The last six are a charge's receipt.
--
-- Exact arithmetic. Lua numbers are doubles, and Redis turns a number into a
-- string with 14 significant digits: at epoch-millisecond magnitudes that
-- rounds a TAT to 0.1 ms, so above 20,000/s a one-message charge vanished.
-- Here every quantity is an integer below 2^53 and is stored with '%d':
--  * the Redis clock in microseconds (about 1.8e15);
--  * TAT = tat_us + tat_frac / tat_rate microseconds, tat_frac < tat_rate;
--  * the bucket's debt D = (TAT - now) × rate, in units where a message
--    costs UNIT (1e6) and a microsecond drains `rate` units, so the emission
--    interval (1e6 / rate µs) needs no division. D never exceeds
--    burst × UNIT ≤ 1e12 (the schema caps rate and burst at 1e6).
--
-- Refunds. A charge buys the slots just before the TAT it leaves; the debt
-- drains first in, first out, so what is left of them at refund time is
-- min(cost, (TAT_charge - now) × rate). Only that is given back: a refund
-- must not turn time that already drained into new credit, or a publish
-- refused after a long call would let others exceed the quota. A refund
-- moves the slots of every later charge earlier, never an earlier one's:
-- `shift` (modulo SHIFT_MOD) counts everything refunded, and each charge has
-- a number (the counter `charges`), so a charge's slots have moved by what
-- was refunded since it (shift now - its shift) less what was refunded of
-- later charges (the refunds zset, by number). (With one counter alone,
-- refunds arriving out of charge order gave back too little: 100 publishes
-- refused at once spent about 26 messages of quota.) The zset keeps the
-- last REFUNDS_KEPT refunds of the current epoch and expires once the debt
-- has drained; one pushed out only makes a refund smaller, never larger. A
-- refund under another config (epoch) gives nothing back.
--
-- Invariant: over any window, written messages ≤ burst + rate × window; a
-- refused call charges nothing (it only ever moves a TAT beyond a full
-- bucket back to one), so refusals never make a tenant wait longer.
local UNIT = 1000000
local SHIFT_MOD = 1125899906842624 -- 2^50: shift + one refund stays below 2^53
local REFUNDS_KEPT = 1000

-- floor(a / b) for integers 0 ≤ a < 2^53 and b > 0, corrected so a rounded
-- quotient is never off by one.
local function idiv(a, b)
  local q = math.floor(a / b)
  local r = a - q * b
  if r < 0 then
    q = q - 1
  elseif r >= b then
    q = q + 1
  end
  return q
end

local function cdiv(a, b)
  return idiv(a + b - 1, b)
end

local cfg = redis.call('HMGET', KEYS[1], 'publish_per_sec', 'burst', 'epoch',
  'tat_us', 'tat_frac', 'tat_rate', 'shift', 'tat', 'charges')
if not cfg[1] then
  return { 2, 0, 0, 0, 0, 0, 0, 0, 0, '', 0 }
end
local rate, burst, epoch = tonumber(cfg[1]), tonumber(cfg[2]), cfg[3] or ''
local refund = ARGV[1] == 'refund'
local cost = tonumber(ARGV[2])
if not refund and cost > burst then
  return { -1, 0, 0, 0, burst, 0, 0, 0, 0, '', 0 }
end
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cap = burst * UNIT
local shift = tonumber(cfg[7] or 0)
local charges = tonumber(cfg[9] or 0)

-- The debt now, in messages (UNIT each) whatever the rate: a TAT written
-- under another rate (`tat_rate`, the quota was changed) is the same debt,
-- drained at the new rate from now on. (Kept as a time instead, a lower rate
-- turned the debt's time into new credit: 1000 messages at 100/s, lowered to
-- 1/s, left a debt of 10 and a new burst at once.) One written by an older
-- version (float milliseconds in field 'tat') counts from its next whole
-- microsecond. Above a full bucket (a lower burst) it counts as a full
-- bucket. Either is stored as such below: left in place, the old TAT would
-- go on draining at the old rate, and a debt above the bucket would keep it
-- full long after the burst / rate seconds every 429 said to wait.
local debt = 0
local tat_us = tonumber(cfg[4] or 0)
local frac, tat_rate = tonumber(cfg[5] or 0), tonumber(cfg[6] or rate)
if not cfg[4] and cfg[8] then
  tat_us, frac, tat_rate = math.ceil(tonumber(cfg[8]) * 1000), 0, rate
end
if tat_us >= now_us then
  debt = (tat_us - now_us) * tat_rate + frac
end
local restate = debt > 0 and tat_rate ~= rate
if debt > cap then
  debt, restate = cap, true
end

-- Stores TAT = now + debt / rate and returns it as (tat_us, tat_frac).
local function store(new_debt, new_shift)
  local whole = idiv(new_debt, rate)
  local us, f = now_us + whole, new_debt - whole * rate
  redis.call('HSET', KEYS[1], 'tat_us', string.format('%d', us), 'tat_frac',
    string.format('%d', f), 'tat_rate', string.format('%d', rate), 'shift',
    string.format('%d', new_shift), 'charges', string.format('%d', charges))
  if cfg[8] then
    redis.call('HDEL', KEYS[1], 'tat')
  end
  return us, f
end

local function reset_ms(d)
  return cdiv(cdiv(d, rate), 1000)
end

if restate then
  store(debt, shift)
end

if refund then
  local r_us, r_frac, r_rate, r_shift = tonumber(ARGV[3]), tonumber(ARGV[4]),
    tonumber(ARGV[5]), tonumber(ARGV[6])
  if ARGV[7] == epoch and r_rate == rate and r_us >= now_us then
    -- What was refunded of later charges since: it did not move this one.
    local later = 0
    local prefix = epoch .. ':'
    for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[8], '+inf')) do
      if string.sub(m, 1, #prefix) == prefix then
        later = later + tonumber(string.match(m, ':(%d+)$'))
      end
    end
    local since = (shift - r_shift) % SHIFT_MOD - later
    local left = (r_us - now_us) * rate + r_frac - since
    left = math.min(left, cost * UNIT, debt)
    if left > 0 then
      debt = debt - left
      store(debt, (shift + left) % SHIFT_MOD)
      redis.call('ZADD', KEYS[2], ARGV[8],
        prefix .. ARGV[8] .. ':' .. string.format('%d', left))
      redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -REFUNDS_KEPT - 1)
      redis.call('PEXPIRE', KEYS[2], reset_ms(debt) + 1000)
    end
  end
  return { 1, 0, idiv(cap - debt, UNIT), reset_ms(debt), burst, 0, 0, 0, 0, '', 0 }
end

local charged = debt + cost * UNIT
if charged > cap then
  return { 0, cdiv(cdiv(charged - cap, rate), 1000), idiv(cap - debt, UNIT),
    reset_ms(debt), burst, 0, 0, 0, 0, '', 0 }
end
charges = charges + 1
local us, f = store(charged, shift)
return { 1, 0, idiv(cap - charged, UNIT), reset_ms(charged), burst, us, f, rate, shift, epoch,
  charges }
