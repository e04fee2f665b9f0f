-- reject.lua: dead-letter deliveries now (poison messages).
--
-- KEYS[1..10]  the group keys (prelude.lua `group_keys`)
-- ARGV[1]  group name
-- ARGV[2]  the topic's wake-up channel (an ordered group's next message)
-- ARGV[3]  error text ('' = none)
-- ARGV[4…] pairs: stream id, '<attempt>:<delivery>'
-- Returns  { status, { 1 dead-lettered | 0 lease_lost … } }, status -1 = no such group
--
-- Invariant: only a current delivery can be rejected; the copy lands in the
-- dead-letter stream in the same step as the entry leaves the PEL.
local g = group_keys()
if redis.call('EXISTS', g.config) == 0 then
  return { -1, {} }
end
local err = ARGV[3]
local now = now_ms()
local out = {}
for i = 4, #ARGV, 2 do
  local id, tail = ARGV[i], ARGV[i + 1]
  if is_current(g, id, tail) then
    local attempt = tonumber(string.match(tail, '^(%d+):'))
    dead_letter(g, id, nil, 'rejected', attempt, err, now)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return { 1, out }
