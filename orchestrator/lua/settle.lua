-- After a claimed saga turned out to need nothing now, put its deadline
-- back where the saga says (or drop it), unless someone has moved it since.
-- KEYS: deadline shard; ARGV: saga id, the lease score we claimed it at,
--       the saga's own wake time in ms ('' for none)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) ~= ARGV[2] then
  return 0
end
if ARGV[3] == '' then
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
end
return 1
