-- reject.lua: dead-letter deliveries now (poison messages).
--
-- KEYS[1]  sc:{T:P}:stream
-- KEYS[2]  sc:{T:P}:g:<G>       group config (existence check)
-- KEYS[3]  sc:{T:P}:g:<G>:dlq   dead letters
-- ARGV[1]  group name
-- ARGV[2]  error text ('' = none)
-- ARGV[3…] triples: stream id, attempt, consumer
-- Returns  { status, { 1 dead-lettered | 0 lease_lost … } }, status -1 = no such group
--
-- Invariant: only a current delivery can be rejected; the copy lands in the
-- dead-letter stream in the same step as the entry leaves the PEL.
local stream, config, dlq = KEYS[1], KEYS[2], KEYS[3]
if redis.call('EXISTS', config) == 0 then
  return { -1, {} }
end
local group, err = ARGV[1], ARGV[2]
local now = now_ms()
local out = {}
for i = 3, #ARGV, 3 do
  local id, attempt, consumer = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  if is_current(stream, group, id, attempt, consumer) then
    dead_letter(stream, group, dlq, id, nil, 'rejected', attempt, err, now)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return { 1, out }
