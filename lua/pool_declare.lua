-- pool_declare.lua: create a reservation pool or change its capacity/lease.
--
-- KEYS[1]  sc:{T}:pool:<P>  hash: capacity, lease_ms, fence, r:<reservation id>
-- ARGV[1]  capacity
-- ARGV[2]  default lease ms
-- Returns  1 created, 0 updated
--
-- Invariant: the fencing counter survives updates, so tokens never repeat.
local created = redis.call('EXISTS', KEYS[1]) == 0 and 1 or 0
redis.call('HSET', KEYS[1], 'capacity', ARGV[1], 'lease_ms', ARGV[2])
redis.call('HSETNX', KEYS[1], 'fence', 0)
return created
