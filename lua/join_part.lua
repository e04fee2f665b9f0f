-- join_part.lua: record one part of a join; the last part (or the
-- deadline) finishes it and publishes the aggregate to the topic, once.
--
-- KEYS[1]  sc:{T:P}:join:<J>
-- KEYS[2]  sc:{T:P}:joins      open joins by deadline
-- KEYS[3]  sc:{T:P}:meta
-- KEYS[4]  sc:{T:P}:stream
-- ARGV[1]  join name
-- ARGV[2]  part name ('' = none: the deadline sweep)
-- ARGV[3]  'r' result | 'e' error (ignored by the sweep)
-- ARGV[4]  the result (JSON text) or the error (a JSON string), as sent
-- ARGV[5]  most bytes of results and errors a join may hold
-- ARGV[6]  message id for the aggregate, should this call publish it
-- ARGV[7]  the topic's wake-up channel
-- Returns  { code, state, stream id of the aggregate ('' = none), the
--            join's traceparent ('' = none) }
--          code 1 recorded, 0 the same part again (no-op), -1 no such join
--          (the sweep drops it from the deadline index, in this step),
--          -2 no such part, -3 the part was recorded with another value,
--          -4 the join is finished and this part came too late,
--          -5 over the byte bound, -6 (sweep) not due or not open,
--          -7 the part came after the deadline and this call finished the
--          join (as the sweep would have); the part is not recorded
--
-- The aggregate carries the `traceparent`, `key` and `correlation_id` the
-- join was declared with.
--
-- Invariants: each part is recorded once; the aggregate is published
-- exactly once, by whichever call finishes the join (the last part, or the
-- sweep or a late part at the deadline), in the same step; a join never
-- waits forever, and no part counts after its deadline (Redis clock), however
-- late the sweep runs.
local join, deadlines, meta, stream = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local name, part, kind, value = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local incarnation = redis.call('HGET', meta, 'incarnation')
local j = redis.call('HMGET', join, 'incarnation', 'parts', 'state', 'deadline', 'on_timeout',
  'bytes', 'recorded', 'total', 'traceparent', 'key', 'correlation_id')
if not j[1] or j[1] ~= incarnation then
  if part == '' then
    -- The sweep found a join that is gone (expired, or an older
    -- incarnation's): it leaves the deadline index here, in the same step,
    -- so a join declared again under its name right after keeps its entry.
    redis.call('ZREM', deadlines, name)
  end
  return { -1, '', '', '' }
end
local parts, state, traceparent = {}, j[3], j[9] or ''
for p in string.gmatch(j[2], '[^\n]+') do
  parts[#parts + 1] = p
end
local now = now_ms()

-- The aggregate: {"join","status","results","errors","missing"}. Results
-- and errors are spliced in as the JSON text their senders gave (already
-- validated), never re-encoded, so no number loses precision.
local function aggregate(status)
  local results, errors, missing = {}, {}, {}
  for _, p in ipairs(parts) do
    local r = redis.call('HGET', join, 'r:' .. p)
    local e = redis.call('HGET', join, 'e:' .. p)
    if r then
      results[#results + 1] = cjson.encode(p) .. ':' .. r
    elseif e then
      errors[#errors + 1] = cjson.encode(p) .. ':' .. e
    else
      missing[#missing + 1] = cjson.encode(p)
    end
  end
  return '{"join":' .. cjson.encode(name) .. ',"status":"' .. status .. '","results":{' ..
    table.concat(results, ',') .. '},"errors":{' .. table.concat(errors, ',') ..
    '},"missing":[' .. table.concat(missing, ',') .. ']}'
end

-- Finishes the join as `status`: publishes the aggregate (unless a timeout
-- dead-letters it) and leaves the deadline index.
local function finish(status, publish)
  local sid = ''
  if publish then
    local seq = redis.call('HINCRBY', meta, 'seq', 1)
    local fields = { 'id', ARGV[6], 'seq', int(seq), 'published_at', int(now),
      'payload', aggregate(status), 'causation_id', name }
    for i, field in ipairs({ 'key', 'correlation_id' }) do
      if j[9 + i] and j[9 + i] ~= '' then
        fields[#fields + 1] = field
        fields[#fields + 1] = j[9 + i]
      end
    end
    -- The declaring step's trace goes on (hex and dashes only: safe in JSON).
    if traceparent ~= '' then
      fields[#fields + 1] = 'headers'
      fields[#fields + 1] = '{"traceparent":"' .. traceparent .. '"}'
    end
    sid = redis.call('XADD', stream, '*', unpack(fields))
    redis.call('PUBLISH', ARGV[7], 1)
  end
  redis.call('HSET', join, 'state', status, 'finished_at', int(now), 'stream_id', sid)
  redis.call('ZREM', deadlines, name)
  return sid
end

-- Finishes an open join whose deadline has passed: `timeout` (the
-- aggregate lists what is missing) or, with on_timeout dead_letter,
-- `dead_lettered` with nothing published.
local function expire()
  state = j[5] == 'dead_letter' and 'dead_lettered' or 'timeout'
  return finish(state, state == 'timeout')
end
local overdue = state == 'open' and tonumber(j[4]) <= now

if part == '' then
  -- The deadline sweep.
  if not overdue then
    return { -6, state, '', traceparent }
  end
  local sid = expire()
  return { 1, state, sid, traceparent }
end

local known = false
for _, p in ipairs(parts) do
  known = known or p == part
end
if not known then
  return { -2, state, '', traceparent }
end
local field = kind .. ':' .. part
local other = (kind == 'r' and 'e:' or 'r:') .. part
local previous = redis.call('HGET', join, field)
if previous then
  local sid = redis.call('HGET', join, 'stream_id') or ''
  return { previous == value and 0 or -3, state, sid, traceparent }
end
if redis.call('HEXISTS', join, other) == 1 then
  return { -3, state, '', traceparent }
end
if overdue then
  local sid = expire()
  return { -7, state, sid, traceparent }
end
if state ~= 'open' then
  return { -4, state, '', traceparent }
end
if tonumber(j[6]) + #value > tonumber(ARGV[5]) then
  return { -5, state, '', traceparent }
end
redis.call('HSET', join, field, value)
redis.call('HINCRBY', join, 'bytes', #value)
local recorded = redis.call('HINCRBY', join, 'recorded', 1)
if kind == 'e' then
  redis.call('HSET', join, 'failed', 1)
end
if recorded == tonumber(j[8]) then
  local status = redis.call('HEXISTS', join, 'failed') == 1 and 'failed' or 'complete'
  return { 1, status, finish(status, true), traceparent }
end
return { 1, state, '', traceparent }
