-- nack.lua: give deliveries back for a retry, or dead-letter them once they
-- have used their last allowed attempt.
--
-- KEYS[1..10]  the group keys (prelude.lua `group_keys`)
-- ARGV[1]  group name
-- ARGV[2]  the topic's wake-up channel
-- ARGV[3]  error text ('' = none), kept as last_error when dead-lettered
-- ARGV[4…] triples: stream id, '<attempt>:<delivery>', retry delay ms
--          (-1: a release: due now and not an attempt, so never
--          dead-lettered: the delivery never reached its handler)
-- Returns  { status, { 1 scheduled | 2 dead-lettered | 0 lease_lost … } }
--          status 1 ok, -1 no such group
--
-- Invariants: a retry leaves the lease set and enters the schedule in one
-- step (member '<id>|<attempt>'), so the retry's attempt count survives any
-- sidecar; the attempt comes from the stored delivery, never from the
-- client; nothing is dropped: an entry is either scheduled or in the
-- dead-letter stream. In an ordered group a retried message stays the head
-- of its key: nothing later of that key goes first. A retry nacked with an
-- error keeps it (deliveries hash: '~<error>', which no receipt matches),
-- so a retry dead-lettered when it comes due (max_deliveries lowered in
-- the meantime) carries the error of its final nack, as the DLQ promises.
local g = group_keys()
local max_deliveries = tonumber(redis.call('HGET', g.config, 'max_deliveries'))
if not max_deliveries then
  return { -1, {} }
end
local err = ARGV[3]
local now = now_ms()
local wake = false
local out = {}
for i = 4, #ARGV, 3 do
  local id, tail, delay = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  if not is_current(g, id, tail) then
    out[#out + 1] = 0
  else
    local attempt = tonumber(string.match(tail, '^(%d+):'))
    if delay < 0 then
      schedule(g, id, attempt - 1, now)
      out[#out + 1] = 1
      wake = true
    elseif attempt >= max_deliveries then
      dead_letter(g, id, nil, 'max_deliveries', attempt, err, now)
      out[#out + 1] = 2
    else
      schedule(g, id, attempt, now + delay)
      if err ~= '' then
        redis.call('HSET', g.deliveries, id, '~' .. err)
      end
      out[#out + 1] = 1
      -- Also for a later retry: a fetch already waiting does not know its
      -- due time, and would find it only at its safety re-check. Woken, it
      -- finds it not due yet and sleeps until it is (the fetch reports the
      -- next due retry); one waiter per group is woken, not all.
      wake = true
    end
  end
end
if wake then
  redis.call('PUBLISH', g.wake, 0)
end
return { 1, out }
