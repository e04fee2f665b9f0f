-- delete_topic.lua: delete a topic and everything its groups hold.
--
-- KEYS[1]  sc:{T:P}:meta
-- KEYS[2]  sc:{T:P}:stream
-- KEYS[3]  sc:{T:P}:groups  set of group names
-- KEYS[4]  sc:{T:P}:joins   open joins by deadline
-- KEYS[5]  sc:{T:P}:progress  groups by their done:<G> counters
-- KEYS[6…] every key of every group in KEYS[3], as the caller read it
-- ARGV     the group names the caller saw in KEYS[3]
-- Returns  1 deleted, 0 no such topic, -1 the group set changed since the
--          caller read it (read again and retry)
--
-- Invariant: no group key of a deleted topic survives it. Idempotency records
-- (sc:{T:P}:dedup:*) are not listed anywhere; they expire on their own and
-- publish.lua ignores records of an older incarnation; so are joins (they
-- expire, and the join scripts ignore an older incarnation's). Keys go in chunks:
-- Lua's unpack has a limit of a few thousand values.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
if redis.call('SCARD', KEYS[3]) ~= #ARGV then
  return -1
end
for _, group in ipairs(ARGV) do
  if redis.call('SISMEMBER', KEYS[3], group) == 0 then
    return -1
  end
end
for i = 1, #KEYS, 500 do
  redis.call('UNLINK', unpack(KEYS, i, math.min(i + 499, #KEYS)))
end
return 1
