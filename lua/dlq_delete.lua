-- dlq_delete.lua: delete the dead letters of one message id.
--
-- KEYS[1]  sc:{T:P}:g:<G>      group config (existence check)
-- KEYS[2]  sc:{T:P}:g:<G>:dlq  dead letters
-- ARGV[1]  message id
-- ARGV[2]  scan cursor: dead-letter stream id to scan after ('-' = start)
-- ARGV[3]  most dead letters to scan in this call
-- Returns  { status, deleted count, next cursor ('' = done) }, status -1 = no such group
--
-- Invariant: only dead letters whose message id matches are removed.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return { -1, 0, '' }
end
local start = ARGV[2] == '-' and '-' or '(' .. ARGV[2]
local count = tonumber(ARGV[3])
local scanned = redis.call('XRANGE', KEYS[2], start, '+', 'COUNT', count)
local deleted = 0
for _, letter in ipairs(scanned) do
  if entry_fields(letter[2]).id == ARGV[1] then
    deleted = deleted + redis.call('XDEL', KEYS[2], letter[1])
  end
end
local next_cursor = ''
if #scanned == count then
  next_cursor = scanned[#scanned][1]
end
return { 1, deleted, next_cursor }
