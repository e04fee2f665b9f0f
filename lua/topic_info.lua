-- topic_info.lua: one consistent reading of a topic (GET topic).
--
-- KEYS[1]  sc:{T:P}:meta
-- KEYS[2]  sc:{T:P}:stream
-- KEYS[3]  sc:{T:P}:groups
-- Returns  nil when the topic does not exist, else
--          { {meta field, value, …}, length, first id, last id,
--            { {group, lag, pending, last-delivered id} … } }
--
-- Read in one step so a racing delete answers "no such topic", never a
-- half-read error. Per group: pending = leased (the PEL less the entries
-- scheduled for a retry or parked behind their key), lag = seq − done:<G> −
-- the whole PEL.
local meta, stream = KEYS[1], KEYS[2]
local fields = redis.call('HGETALL', meta)
if #fields == 0 then
  return false
end
local m = entry_fields(fields)
local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1]
local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)[1]
local names = {}
for _, name in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  names[name] = true
end
local groups = {}
if redis.call('EXISTS', stream) == 1 then
  for _, row in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local info = entry_fields(row)
    if names[info.name] then
      local summary = redis.call('XPENDING', stream, info.name)
      local scheduled = 0
      for _, owner in ipairs(summary[4] or {}) do
        if owner[1] == SCHEDULED or owner[1] == PARKED then
          scheduled = scheduled + tonumber(owner[2])
        end
      end
      local lag = tonumber(m.seq or 0) - tonumber(m['done:' .. info.name] or 0) - summary[1]
      groups[#groups + 1] = { info.name, math.max(lag, 0), summary[1] - scheduled, info['last-delivered-id'] }
    end
  end
end
return { fields, redis.call('XLEN', stream), first and first[1] or '', last and last[1] or '', groups }
