-- A channel's history as `history` lists it: {epoch, last offset, the
-- oldest ARGV[3] entries after offset ARGV[1] when ARGV[2] is the
-- channel's epoch (else from its start)}; {'', 0, {}} for a channel Redis
-- does not know. KEYS[1] meta hash, KEYS[2] stream.
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  return {'', 0, {}}
end
local last = tonumber(redis.call('HGET', KEYS[1], 'o') or '0')
local after = 0
if ARGV[2] == epoch then
  after = math.min(tonumber(ARGV[1]), last)
end
local entries = {}
if tonumber(ARGV[3]) > 0 then
  entries = redis.call('XRANGE', KEYS[2], string.format('%d-0', after + 1), '+', 'COUNT', ARGV[3])
end
return {epoch, last, entries}
