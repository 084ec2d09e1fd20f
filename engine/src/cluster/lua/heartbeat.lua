-- A node's heartbeat: its counts replace the previous ones, whole, and
-- expire unless refreshed. KEYS[1] the node's hash. ARGV[1] ttl ms, then
-- field, value pairs (written 500 pairs at a time).
redis.call('DEL', KEYS[1])
for i = 2, #ARGV, 1000 do
  redis.call('HSET', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
