-- dlq_delete.lua: delete the dead letters of one message id.
--
-- KEYS[1]  sc:{T:P}:g:<G>            group config (existence check)
-- KEYS[2]  sc:{T:P}:g:<G>:dlq        dead letters
-- KEYS[3]  sc:{T:P}:g:<G>:dlq:index  message id → dead letter ids
-- ARGV[1]  message id
-- Returns  { status, deleted count }, status -1 = no such group
--
-- Invariant: only dead letters whose message id matches are removed, found
-- through the index (O(k), never a scan of the DLQ).
if redis.call('EXISTS', KEYS[1]) == 0 then
  return { -1, 0 }
end
local deleted = 0
for letter in string.gmatch(redis.call('HGET', KEYS[3], ARGV[1]) or '', '%S+') do
  deleted = deleted + redis.call('XDEL', KEYS[2], letter)
end
redis.call('HDEL', KEYS[3], ARGV[1])
return { 1, deleted }
