-- reject.lua: dead-letter deliveries now (poison messages).
--
-- KEYS[1..8]  the group keys (prelude.lua `group_keys`)
-- ARGV[1]  group name
-- ARGV[2]  error text ('' = none)
-- ARGV[3…] pairs: stream id, '<attempt>:<delivery>'
-- Returns  { status, { 1 dead-lettered | 0 lease_lost … } }, status -1 = no such group
--
-- Invariant: only a current delivery can be rejected; the copy lands in the
-- dead-letter stream in the same step as the entry leaves the PEL.
local g = group_keys(ARGV[1])
if redis.call('EXISTS', g.config) == 0 then
  return { -1, {} }
end
local err = ARGV[2]
local now = now_ms()
local out = {}
for i = 3, #ARGV, 2 do
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
