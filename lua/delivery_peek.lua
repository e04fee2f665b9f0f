-- delivery_peek.lua: is a receipt's delivery current, and whose message is it?
--
-- KEYS[1..10]  the group keys (prelude.lua `group_keys`)
-- ARGV[1]      group name
-- ARGV[2]      the topic's wake-up channel (unused)
-- ARGV[3]      stream id
-- ARGV[4]      '<attempt>:<delivery>' of the receipt
-- Returns  { status, current (0|1), message id, correlation id ('' = none),
--            traceparent ('' = none) }
--          status 1 ok, -1 no such group
--
-- Read-only. Ack with emit asks this first, so a worker whose lease is lost
-- emits nothing (the ack after the emits is fenced again).
local g = group_keys()
if redis.call('EXISTS', g.config) == 0 then
  return { -1, 0, '', '', '' }
end
local id = ARGV[3]
if not is_current(g, id, ARGV[4]) then
  return { 1, 0, '', '', '' }
end
local entry = redis.call('XRANGE', g.stream, id, id)[1]
local f = entry and entry_fields(entry[2]) or {}
return { 1, 1, f.id or '', f.correlation_id or '', traceparent_of(f) }
