-- A notify_all for every node: id = max(TIME in us, last + 1).
-- KEYS[1] the broadcast id clock. ARGV: data, pub/sub channel.
local t = redis.call('TIME')
local sec, usec = tonumber(t[1]), tonumber(t[2])
local id = sec * 1000000 + usec
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
if id <= last then id = last + 1 end
local ids = string.format('%d', id)
redis.call('SET', KEYS[1], ids)
redis.call('PUBLISH', ARGV[2], string.format('%s %d\n', ids, sec) .. ARGV[1])
return ids
