-- channel_declare.lua: set a channel's config and apply it to the history
-- at once (a smaller history_size trims it now, exactly).
--
-- KEYS[1] history stream, KEYS[2] meta hash, KEYS[3] config hash.
-- ARGV[1] history_size, ARGV[2] history_ttl_ms, ARGV[3] how long the
-- config is kept after its last publish or PUT (ms): names come from
-- clients, so no channel key lives forever.
-- Reply: 1 if the config was created, 0 if it was updated.
local history, meta, config = KEYS[1], KEYS[2], KEYS[3]
local size, ttl = ARGV[1], ARGV[2]
local created = redis.call('EXISTS', config) == 0 and 1 or 0
redis.call('HSET', config, 'history_size', size, 'history_ttl_ms', ttl)
redis.call('PEXPIRE', config, ARGV[3])
if tonumber(size) == 0 then
  -- No history is kept from now on: none is missing either.
  redis.call('DEL', history)
  redis.call('HDEL', meta, 'kept')
elseif redis.call('EXISTS', history) == 1 then
  redis.call('XTRIM', history, 'MAXLEN', size)
end
-- A shorter TTL applies from now on; a longer one from the next publish.
if redis.call('PTTL', meta) > tonumber(ttl) then
  redis.call('PEXPIRE', meta, ttl)
  redis.call('PEXPIRE', history, ttl)
end
return created
