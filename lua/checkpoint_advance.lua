-- checkpoint_advance.lua: move a high-water mark forward, never back.
--
-- KEYS[1]  sc:{T}:checkpoint:<name>  the highest sequence processed
-- ARGV[1]  the sequence just processed
-- Returns  { accepted (0|1), the mark after this call }
--
-- Invariant: the stored mark only increases; a sequence at or below it is
-- refused (a duplicate or an out-of-order replay).
local current = tonumber(redis.call('GET', KEYS[1]))
local seq = tonumber(ARGV[1])
if current and seq <= current then
  return { 0, current }
end
redis.call('SET', KEYS[1], ARGV[1])
return { 1, seq }
