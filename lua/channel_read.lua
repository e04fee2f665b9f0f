-- channel_read.lua: one consistent reading of a channel: its config, epoch
-- and top offset, and up to ARGV[2] history entries after offset ARGV[1].
--
-- KEYS[1] history stream, KEYS[2] meta hash, KEYS[3] config hash.
-- ARGV[1] after (offset), ARGV[2] limit (0 = none), ARGV[3] default
-- history_size, ARGV[4] default history_ttl_ms, ARGV[5] byte budget: the
-- entries returned stop before the one that would pass it (the first is
-- always returned), so a page of large messages stays small.
-- Reply: {epoch, top, history_size, history_ttl_ms, {{id, fields}, …}}.
--
-- A channel without meta, or whose history was lost, gets a new epoch here
-- (top 0, same TTL as after a publish; see channel_head in the prelude): a
-- subscriber that arrives first must hold the epoch the first publish will
-- use, or its position would be reset for nothing.
local history, meta, config = KEYS[1], KEYS[2], KEYS[3]
local after, limit = tonumber(ARGV[1]), tonumber(ARGV[2])

local c = redis.call('HMGET', config, 'history_size', 'history_ttl_ms')
local size = c[1] or ARGV[3]
local ttl = c[2] or ARGV[4]

local epoch, top = channel_head(history, meta, ttl)

local entries = {}
if limit > 0 and top > after then
  entries = redis.call('XRANGE', history, int(after + 1), '+', 'COUNT', int(limit))
  local budget, used = tonumber(ARGV[5]), 0
  for i = 1, #entries do
    local fields = entries[i][2]
    for j = 2, #fields, 2 do
      used = used + #fields[j]
    end
    if i > 1 and used > budget then
      for k = #entries, i, -1 do
        entries[k] = nil
      end
      break
    end
  end
end
return { epoch, int(top), size, ttl, entries }
