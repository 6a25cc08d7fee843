-- Claim due sagas from one deadline shard by moving them forward by a lease,
-- never by removing them: if the claimer dies, the timeout fires again when
-- the lease runs out, and no other claimer takes it in the meantime.
-- KEYS: deadline shard; ARGV: now (ms), lease end (ms), limit
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(due) do
  redis.call('ZADD', KEYS[1], ARGV[2], id)
end
return due
