-- pool_info.lua: describe a pool and its live holders.
--
-- KEYS[1]  sc:{T}:pool:<P>          pool hash
-- KEYS[2]  sc:{T}:pool:<P>:holders  zset reservation id → expires_at
-- Returns  { capacity, lease_ms, { { reservation_id, holder|fence, expires_at } … } },
--          or { -1 } when the pool does not exist
--
-- Frees expired holders first, so what it reports is what acquire sees.
return describe_pool(KEYS[1], KEYS[2]) or { -1 }
