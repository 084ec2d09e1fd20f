-- The newest publications (at most ARGV[3]) of a channel's stream from
-- offset ARGV[1] to ARGV[2] inclusive, newest first, with the channel's
-- epoch, read together. KEYS[1] meta hash, KEYS[2] stream.
local epoch = redis.call('HGET', KEYS[1], 'e') or ''
local entries = redis.call('XREVRANGE', KEYS[2], ARGV[2] .. '-0', ARGV[1] .. '-0', 'COUNT', ARGV[3])
return {epoch, entries}
