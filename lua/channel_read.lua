-- channel_read.lua: one consistent reading of a channel: its config, epoch
-- and top offset, and up to ARGV[2] history entries after offset ARGV[1].
--
-- KEYS[1] history stream, KEYS[2] meta hash, KEYS[3] config hash.
-- ARGV[1] after (offset), ARGV[2] limit (0 = none), ARGV[3] default
-- history_size, ARGV[4] default history_ttl_ms, ARGV[5] byte budget: the
-- entries returned stop before the one that would pass it (the first is
-- always returned), so a page of large messages stays small, and so does
-- what the script reads to build it (a few entries past the budget at most).
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

local epoch, top = channel_head(history, meta, ttl, true)

local entries = {}
if limit > 0 and top > after then
  -- Read in small batches, each sized by what is left of the budget at the
  -- largest entry seen so far, and stop at the budget: a page of large
  -- messages must not load up to `limit` of them into the script only to
  -- return a few (Redis memory, and a replay from the start would read the
  -- whole history again for every page).
  local budget, used, biggest = tonumber(ARGV[5]), 0, 0
  local start, want = int(after + 1), math.min(limit, 8)
  while want > 0 do
    local batch = redis.call('XRANGE', history, start, '+', 'COUNT', want)
    for i = 1, #batch do
      local bytes, fields = 0, batch[i][2]
      for j = 2, #fields, 2 do
        bytes = bytes + #fields[j]
      end
      if #entries > 0 and used + bytes > budget then
        want = 0
        break
      end
      used = used + bytes
      biggest = math.max(biggest, bytes)
      entries[#entries + 1] = batch[i]
    end
    if want == 0 or #batch < want then
      break
    end
    start = '(' .. batch[#batch][1]
    want = math.min(limit - #entries, 32, math.floor((budget - used) / math.max(biggest, 1)) + 1)
  end
end
return { epoch, int(top), size, ttl, entries }
