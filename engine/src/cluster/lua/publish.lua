-- One publication, in one round trip (docs/CLUSTER.md).
-- KEYS[1] meta hash, KEYS[2] stream, KEYS[3] (standalone only) id clock.
-- ARGV: data, history size, history ttl ms, channel ttl s, pub/sub
-- channel, origin node, exclude, publish command (PUBLISH or SPUBLISH).
local t = redis.call('TIME')
local sec, usec = tonumber(t[1]), tonumber(t[2])
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = string.format('%x.%x', sec, usec)
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch, 'o', 0)
end
local offset = redis.call('HINCRBY', KEYS[1], 'o', 1)
local id = sec * 1000000 + usec
local last
if KEYS[3] then
  last = tonumber(redis.call('GET', KEYS[3]) or '0')
else
  last = tonumber(redis.call('HGET', KEYS[1], 'i') or '0')
end
if id <= last then id = last + 1 end
local ids = string.format('%d', id)
if KEYS[3] then
  redis.call('SET', KEYS[3], ids)
else
  redis.call('HSET', KEYS[1], 'i', ids)
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
local size = tonumber(ARGV[2])
if size > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', size, string.format('%d-0', offset),
    'd', ARGV[1], 'i', ids, 't', string.format('%d', sec * 1000 + math.floor(usec / 1000)))
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
local header = string.format('%d %s %d %s %s %s\n', offset, ids, sec, epoch, ARGV[6], ARGV[7])
redis.call(ARGV[8], ARGV[5], header .. ARGV[1])
return {offset, ids, epoch, sec}
