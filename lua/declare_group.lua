-- declare_group.lua: create a consumer group or update its config.
--
-- KEYS[1]  sc:{T:P}:meta      topic config (the topic is declared if missing)
-- KEYS[2]  sc:{T:P}:stream    the topic stream (created empty if missing)
-- KEYS[3]  sc:{T:P}:groups    set of group names
-- KEYS[4]  sc:{T:P}:g:<G>     group config hash
-- KEYS[5]  sc:{T:P}:progress  groups by their done:<G> counters
-- ARGV[1]  default dedup window ms (for a topic created here)
-- ARGV[2]  group name
-- ARGV[3]  start position for a new group: '0', '$' or a stream id
-- ARGV[4]  ordering asked for: 'none', 'key' or '' (not given)
-- ARGV[5]  D = number of default field/value pairs, then D pairs (written
--          only when the group is created), then pairs to set now
-- Returns  { group_created (1|0, or -1 when the group exists with another
--          ordering, -2 when a new group's start id is in the future:
--          nothing changed), topic_created (0|1), the group's ordering }
--
-- Invariants: a group exists exactly when its config hash exists, its name
-- is in the groups set and the Redis consumer group exists; `start` applies
-- only at creation, so re-declaring never moves a live group's position;
-- `ordering` is fixed at creation (changing it under live keys would break
-- the one-in-progress-per-key promise);
-- from creation on, meta `seq` − `done:<G>` is what the group owes: every
-- entry after its start (entries carry their seq, and the stream holds a
-- contiguous run of them, since retention trims only from the front).
local meta, stream, groups, config = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local group, start, ordering = ARGV[2], ARGV[3], ARGV[4]
local defaults = tonumber(ARGV[5])
local existing = redis.call('HGET', config, 'ordering')
if redis.call('EXISTS', config) == 1 then
  existing = existing or 'none'
  if ordering ~= '' and ordering ~= existing then
    return { -1, 0, existing }
  end
end
-- A new group's start id after both the stream's last entry and the Redis
-- clock would make the group owe every message published until the clock
-- passes it (their ids come before it: never delivered): refused, before
-- anything is written.
if start ~= '0' and start ~= '$' and redis.call('EXISTS', config) == 0 then
  local ms, seq = string.match(start, '^(%d+)%-?(%d*)$')
  local id = ms .. '-' .. (seq == '' and '0' or seq)
  local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)[1]
  if (not last or sortable_id(id) > sortable_id(last[1])) and tonumber(ms) >= now_ms() then
    return { -2, 0, '' }
  end
end
local _, topic_created = ensure_topic(meta, ARGV[1])
local created = 0
if redis.call('EXISTS', config) == 0 then
  -- A consumer group without its config has no owner (left by a crash in
  -- an older version): start it over, so the counters below hold.
  redis.pcall('XGROUP', 'DESTROY', stream, group)
  redis.call('XGROUP', 'CREATE', stream, group, start, 'MKSTREAM')
  -- The group's last-delivered id, kept in its config (prelude.lua
  -- `last_delivered`): where XGROUP CREATE put it.
  local read = '0-0'
  if start == '$' then
    read = entry_fields(redis.call('XINFO', 'STREAM', stream))['last-generated-id']
  elseif start ~= '0' then
    local ms, seq = string.match(start, '^(%d+)%-?(%d*)$')
    read = ms .. '-' .. (seq == '' and '0' or seq)
  end
  local seq = redis.call('HGET', meta, 'seq')
  local done = seq
  if start ~= '$' then
    local first
    if start == '0' then
      first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
    else
      -- The largest id has no successor: nothing can follow it.
      first = redis.pcall('XRANGE', stream, '(' .. start, '+', 'COUNT', 1)
      if first.err then
        first = {}
      end
    end
    if first[1] then
      done = int(tonumber(entry_fields(first[1][2]).seq) - 1)
    end
  end
  redis.call('HSET', meta, 'done:' .. group, done)
  redis.call('ZADD', KEYS[5], done, group)
  redis.call('SADD', groups, group)
  if ordering == '' then
    ordering = 'none'
  end
  redis.call('HSET', config, 'created_at', int(now_ms()), 'ordering', ordering,
    'last_delivered', read, unpack(ARGV, 6, 5 + 2 * defaults))
  existing = ordering
  created = 1
end
if #ARGV > 5 + 2 * defaults then
  redis.call('HSET', config, unpack(ARGV, 6 + 2 * defaults))
end
return { created, topic_created, existing }
