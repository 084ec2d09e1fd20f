-- A channel's position for a node attaching to it: {last offset, epoch},
-- starting a new epoch when the channel has none (docs/CLUSTER.md).
-- KEYS[1] meta hash, KEYS[2] stream. ARGV[1] channel ttl s.
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  local t = redis.call('TIME')
  epoch = string.format('%x.%x', tonumber(t[1]), tonumber(t[2]))
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch, 'o', 0)
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return {tonumber(redis.call('HGET', KEYS[1], 'o')), epoch}
