-- prelude.lua: helpers prepended to every script by src/scripts.rs (Lua
-- scripts cannot load modules). Defines no keys and writes nothing itself.

-- Milliseconds since the epoch by the Redis clock, plus the raw TIME reply.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), t
end

-- Creates a topic's meta hash with defaults unless it exists. Returns the
-- topic's incarnation and 1 if this call created it (else 0).
local function ensure_topic(meta, default_dedup_window_ms)
  local incarnation = redis.call('HGET', meta, 'incarnation')
  if incarnation then
    return incarnation, 0
  end
  local now, t = now_ms()
  incarnation = t[1] .. '.' .. t[2]
  redis.call('HSET', meta, 'incarnation', incarnation, 'created_at', now,
    'dedup_window_ms', default_dedup_window_ms, 'retention_ms', 0, 'max_backlog', 0, 'seq', 0)
  return incarnation, 1
end

-- A topic's publish idempotency record (`incarnation\nid\nstream id\nseq`,
-- written by publish.lua) as { id, stream_id, seq } while it still counts,
-- else nil: a record of an earlier incarnation of the topic does not count,
-- nor one older than the topic's current dedup window `window` (ms; a
-- lowered window applies at once to keys already seen). Its age is read
-- from the stream id, which holds the Redis time of the write.
local function dedup_record(record, incarnation, now, window)
  if not record then
    return nil
  end
  local inc, pid, psid, pseq = string.match(record, '^([^\n]*)\n([^\n]*)\n([^\n]*)\n([^\n]*)$')
  if inc ~= incarnation then
    return nil
  end
  local written = tonumber(string.match(psid or '', '^(%d+)%-'))
  if written and window and now - written >= window then
    return nil
  end
  return { pid, psid, pseq }
end

-- Flat {field, value, …} reply of a stream entry → table by field name.
local function entry_fields(flat)
  local fields = {}
  for i = 1, #flat, 2 do
    fields[flat[i]] = flat[i + 1]
  end
  return fields
end

-- The `traceparent` in an entry's stored headers ('' = none). The headers
-- are compact JSON written by the sidecar; the key starts a member.
local function traceparent_of(f)
  return string.match(f.headers or '', '[{,]"traceparent":"([%x%-]+)"') or ''
end

-- An integer as exact decimal text. Lua numbers are doubles and `tostring`
-- (or `..`) prints only 14 significant digits; every integer a script
-- stores or concatenates goes through this.
local function int(n)
  return string.format('%d', n)
end

-- A realtime channel's epoch and top offset, checked against its history
-- (channel_publish.lua, channel_read.lua). The meta hash holds `epoch`,
-- `top`, `run` (the run id of the Redis process that started the epoch)
-- and, while the history must end with the top message (the last publish
-- appended to it), `kept` = that offset. Whenever history was lost (meta
-- gone: expired, deleted, Redis lost data; or the history gone, trimmed or
-- out of step with the meta: deleted alone, trimmed by someone else,
-- restored from another moment than the meta; or another Redis process: a
-- restart from a snapshot older than the last writes, or a failover to a
-- replica that lagged, lose a tail the data itself does not show) a new
-- epoch starts from an empty history, so an old position is never
-- trusted. With `whole` (reads, which serve history), a history with a
-- hole (an entry deleted from its middle by someone else) is lost history
-- too: it is always one run of offsets ending at `kept` (exact MAXLEN,
-- exact trims). A publish need not look (a hole makes it reuse no offset;
-- the next read starts the new epoch), which keeps it cheap. A new meta
-- expires after `ttl` ms. Returns epoch, top (a number).
local function channel_head(history, meta, ttl, whole)
  -- '' where INFO does not say (a proxy that hides it): then only the
  -- data's own checks below apply.
  local run = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)') or ''
  local m = redis.call('HMGET', meta, 'epoch', 'top', 'kept', 'run')
  local epoch, top, kept = m[1], m[2], m[3]
  if epoch and m[4] == run and not kept then
    return epoch, tonumber(top or 0)
  end
  if epoch and m[4] == run and kept == top then
    local last = redis.call('XREVRANGE', history, '+', '-', 'COUNT', 1)[1]
    if last and last[1] == kept .. '-0' then
      if not whole then
        return epoch, tonumber(top)
      end
      local first = redis.call('XRANGE', history, '-', '+', 'COUNT', 1)[1][1]
      local oldest = tonumber(string.sub(first, 1, string.find(first, '-', 1, true) - 1))
      if redis.call('XLEN', history) == tonumber(kept) - oldest + 1 then
        return epoch, tonumber(top)
      end
    end
  end
  -- Redis time in microseconds: never repeats for a channel name.
  local t = redis.call('TIME')
  epoch = t[1] .. string.format('%06d', tonumber(t[2]))
  redis.call('DEL', history)
  redis.call('HSET', meta, 'epoch', epoch, 'top', 0, 'run', run)
  redis.call('HDEL', meta, 'kept')
  redis.call('PEXPIRE', meta, ttl)
  return epoch, 0
end

-- PEL owner of entries waiting in a group's retry schedule. Consumer names
-- start with a letter or digit, so no client can be called this.
local SCHEDULED = '~scheduled'
-- PEL owner of entries of an ordered group waiting behind an earlier
-- message of their key.
local PARKED = '~parked'

-- The keys every group script takes first, in this order (src/broker/
-- delivery.rs `group_call` passes them): KEYS[1..11], the last one the
-- topic's progress zset (shared by its groups); ARGV[1] is the group name
-- and ARGV[2] the topic's wake-up channel.
local function group_keys()
  local g = { name = ARGV[1], wake = ARGV[2], stream = KEYS[1], config = KEYS[2],
    delayed = KEYS[3], dlq = KEYS[4], meta = KEYS[5], leases = KEYS[6], deliveries = KEYS[7],
    dlq_index = KEYS[8], heads = KEYS[9], parked = KEYS[10], progress = KEYS[11] }
  g.ordered = redis.call('HGET', g.config, 'ordering') == 'key'
  return g
end

-- The group's last-delivered id (nil when the stream has no such group).
-- Redis tells it only through XINFO GROUPS, which lists every group of the
-- stream (O(groups) per call), so the group's config keeps a copy,
-- `last_delivered`, written where the id moves: declare_group.lua (XGROUP
-- CREATE) and fetch.lua (XREADGROUP, the only reader of new entries). A
-- group declared by an older version has no copy: it is listed once here
-- and kept.
local function last_delivered(g)
  local id = redis.call('HGET', g.config, 'last_delivered')
  if id then
    return id
  end
  for _, row in ipairs(redis.call('XINFO', 'GROUPS', g.stream)) do
    if row[2] == g.name then
      id = entry_fields(row)['last-delivered-id']
      redis.call('HSET', g.config, 'last_delivered', id)
      return id
    end
  end
  return nil
end

-- True while the delivery a receipt names is current. `tail` is the
-- receipt's '<attempt>:<delivery number>'; delivery numbers come from a
-- per-topic counter that never repeats, so a receipt from an earlier
-- delivery, an earlier incarnation of the group or another group of the
-- topic never matches.
local function is_current(g, id, tail)
  return redis.call('HGET', g.deliveries, id) == tail
end

-- Parks entry `id` (in the PEL) in the retry schedule, due at `due`, with
-- `attempts` deliveries used. It stays in the PEL, owned by SCHEDULED, so
-- the PEL holds every entry a group has started and not finished. `force`:
-- the entry is not in the PEL yet (a DLQ replay).
local function schedule(g, id, attempts, due, force)
  redis.call('ZREM', g.leases, id)
  redis.call('HDEL', g.deliveries, id)
  if force then
    redis.call('XCLAIM', g.stream, g.name, SCHEDULED, 0, id, 'FORCE', 'JUSTID')
  else
    redis.call('XCLAIM', g.stream, g.name, SCHEDULED, 0, id, 'JUSTID')
  end
  redis.call('ZADD', g.delayed, int(due), id .. '|' .. int(attempts))
end

-- Ordered groups. A key's head (the one message of the key in progress:
-- leased or scheduled) is in `heads` (key → stream id); the messages behind
-- it wait in `parked`, a zset of equal scores ordered by member:
-- '<key length, 5 digits><key><arrival number, 16 digits><stream id>', so
-- one key's members are contiguous, in arrival order, and no key's prefix
-- is another key's (the length comes first). Finding a key's next message
-- is one ZRANGE BYLEX: O(log n), never a scan.
local function parked_prefix(key)
  return string.format('%05d', #key) .. key
end

-- Makes entry `id` the head of `key` when the key is free (returns true),
-- else parks it at the back of the key (returns false). `force`: the entry
-- is not in the PEL yet.
local function take_key(g, key, id, force)
  local head = redis.call('HGET', g.heads, key)
  if not head or head == id then
    redis.call('HSET', g.heads, key, id)
    return true
  end
  local n = redis.call('HINCRBY', g.config, 'arrivals', 1)
  if force then
    redis.call('XCLAIM', g.stream, g.name, PARKED, 0, id, 'FORCE', 'JUSTID')
  else
    redis.call('XCLAIM', g.stream, g.name, PARKED, 0, id, 'JUSTID')
  end
  redis.call('ZADD', g.parked, 0, parked_prefix(key) .. string.format('%016d', n) .. id)
  return false
end

-- The head of `key` is done: its next parked message becomes the head,
-- scheduled for now (or its deliver_at), and waiting fetches are woken.
local function release_key(g, key)
  local prefix = parked_prefix(key)
  local next_member = redis.call('ZRANGE', g.parked, '[' .. prefix, '(' .. prefix .. '\255',
    'BYLEX', 'LIMIT', 0, 1)[1]
  if not next_member then
    redis.call('HDEL', g.heads, key)
    return
  end
  redis.call('ZREM', g.parked, next_member)
  local id = string.sub(next_member, #prefix + 17)
  local entry = redis.call('XRANGE', g.stream, id, id)[1]
  local deliver_at = entry and tonumber(entry_fields(entry[2]).deliver_at or 0) or 0
  redis.call('HSET', g.heads, key, id)
  schedule(g, id, 0, math.max(now_ms(), deliver_at))
  redis.call('PUBLISH', g.wake, 0)
end

-- A stream id as fixed-width digits (ms and seq, 20 each), so ids compare
-- as strings.
local function sortable_id(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return string.rep('0', 20 - #ms) .. ms .. string.rep('0', 20 - #seq) .. seq
end

-- DLQ replays in an ordered group that has not read its whole stream yet
-- are deferred: the group may not have read every earlier message of the
-- key, so the replay cannot take its place in the key yet. They wait in
-- `parked` (PEL owner PARKED) as '~<sortable stream top at the replay>
-- <stream id>|<key>' ('~' sorts after every key's members), until fetch
-- reads past that top (dlq_replay.lua, fetch.lua).
local function defer_replay(g, key, id, top)
  redis.call('XCLAIM', g.stream, g.name, PARKED, 0, id, 'FORCE', 'JUSTID')
  redis.call('ZADD', g.parked, 0, '~' .. sortable_id(top) .. id .. '|' .. key)
end

-- The sortable top of the first deferred replay, or nil.
local function first_deferred(g)
  local m = redis.call('ZRANGE', g.parked, '[~', '+', 'BYLEX', 'LIMIT', 0, 1)[1]
  return m and string.sub(m, 2, 41)
end

-- Deferred replays whose top sorts before `upto` ('<sortable id>' for tops
-- before that id, '<sortable id>~' for tops up to it; nil: all, up to 1000)
-- join the back of their key now; a free key's replay is due at `due`.
local function release_deferred(g, upto, due)
  local members = redis.call('ZRANGE', g.parked, '[~', upto and ('(~' .. upto) or '+', 'BYLEX',
    'LIMIT', 0, 1000)
  for _, m in ipairs(members) do
    redis.call('ZREM', g.parked, m)
    local id, key = string.match(string.sub(m, 42), '^([^|]+)|(.*)$')
    if take_key(g, key, id) then
      schedule(g, id, 0, due)
    end
  end
  if #members > 0 then
    redis.call('PUBLISH', g.wake, 0)
  end
end

-- The ordering key of an entry with fields `f` in this group, or nil.
local function order_key(g, f)
  if g.ordered and f and f.key and f.key ~= '' then
    return f.key
  end
  return nil
end

-- Ends entry `id` (fields `f`, when known) for the group: out of the PEL
-- and the lease set, one message less owed (`done:<G>`, mirrored in the
-- topic's progress zset for publish.lua's backlog check), and in an ordered
-- group its key passes to the next message.
local function finish(g, id, f)
  redis.call('XACK', g.stream, g.name, id)
  redis.call('ZREM', g.leases, id)
  redis.call('HDEL', g.deliveries, id)
  redis.call('HINCRBY', g.meta, 'done:' .. g.name, 1)
  redis.call('ZINCRBY', g.progress, 1, g.name)
  local key = order_key(g, f)
  if key and redis.call('HGET', g.heads, key) == id then
    release_key(g, key)
  end
end

-- Acks the receipts given as ARGV pairs (stream id, '<attempt>:<delivery>')
-- from ARGV[first] on, each only while its delivery is current (fencing: a
-- worker whose lease lapsed and whose message went to someone else learns
-- lease_lost). Returns, per receipt, { 1, published_at, id, correlation_id,
-- causation_id, traceparent ('' = none) } when acked or { 0 } when the lease
-- was lost.
local function ack_receipts(g, first)
  local out = {}
  for i = first, #ARGV, 2 do
    local id = ARGV[i]
    if is_current(g, id, ARGV[i + 1]) then
      local entry = redis.call('XRANGE', g.stream, id, id)[1]
      local f = entry and entry_fields(entry[2]) or {}
      finish(g, id, f)
      out[#out + 1] = { 1, tonumber(f.published_at or 0), f.id or '', f.correlation_id or '', f.causation_id or '',
        traceparent_of(f) }
    else
      out[#out + 1] = { 0 }
    end
  end
  return out
end

-- Moves entry `id` out of the group's delivery path into its dead-letter
-- stream: a copy of the original fields plus stream_id, reason, attempts,
-- last_error and dead_lettered_at; the message id is indexed so replay and
-- delete find it directly. `flat` is the entry's field list when the caller
-- has it (else it is read). An entry that no longer exists is only
-- finished. Returns 1 if a dead letter was written.
local function dead_letter(g, id, flat, reason, attempts, last_error, now)
  if not flat then
    local found = redis.call('XRANGE', g.stream, id, id)
    flat = found[1] and found[1][2]
  end
  if not flat then
    finish(g, id, nil)
    return 0
  end
  local fields = entry_fields(flat)
  finish(g, id, fields)
  local entry = { 'stream_id', id, 'reason', reason, 'attempts', int(attempts),
    'dead_lettered_at', int(now) }
  if last_error and last_error ~= '' then
    entry[#entry + 1] = 'last_error'
    entry[#entry + 1] = last_error
  end
  for i = 1, #flat do
    entry[#entry + 1] = flat[i]
  end
  local letter = redis.call('XADD', g.dlq, '*', unpack(entry))
  local message_id = fields.id or ''
  local known = redis.call('HGET', g.dlq_index, message_id)
  redis.call('HSET', g.dlq_index, message_id, known and (known .. ' ' .. letter) or letter)
  return 1
end

-- Drops a pool's holders whose lease ended at or before `now`, the oldest
-- first and at most 1000 per call, so one call never stalls Redis for long
-- (all 100,000 leases of a full pool ending at once took 250 ms to free in
-- one call). Holders left for later calls are already not live: every
-- script counts and shows only leases that end after now (`live_holders`).
-- Returns how many slots that freed.
local function release_expired(pool, holders, now)
  local gone = redis.call('ZRANGE', holders, '-inf', int(now), 'BYSCORE', 'LIMIT', 0, 1000)
  for _, id in ipairs(gone) do
    redis.call('HDEL', pool, 'r:' .. id)
  end
  if #gone > 0 then
    -- They are the lowest scores, so the first #gone ranks.
    redis.call('ZREMRANGEBYRANK', holders, 0, #gone - 1)
  end
  return #gone
end

-- How many of a pool's holders are live (their lease ends after `now`).
local function live_holders(holders, now)
  return redis.call('ZCOUNT', holders, '(' .. int(now), '+inf')
end

-- A pool's { capacity, lease_ms, { { reservation id, holder|fence,
-- expires_at } … } } once its expired holders are freed (so it shows what
-- acquire sees), or nil when the pool does not exist.
local function describe_pool(pool, holders)
  local cfg = redis.call('HMGET', pool, 'capacity', 'lease_ms')
  if not cfg[1] then
    return nil
  end
  local out = {}
  local now = now_ms()
  release_expired(pool, holders, now)
  local live = redis.call('ZRANGE', holders, '(' .. int(now), '+inf', 'BYSCORE', 'WITHSCORES')
  for i = 1, #live, 2 do
    out[#out + 1] = { live[i], redis.call('HGET', pool, 'r:' .. live[i]), tonumber(live[i + 1]) }
  end
  return { tonumber(cfg[1]), tonumber(cfg[2]), out }
end
