-- Claim what is due in a sorted set (a deadline shard, or the index of
-- unconfirmed outboxes) by moving it forward by a lease, never by removing
-- it: if the claimer dies, the item is due again when the lease runs out,
-- and no other claimer takes it in the meantime.
-- KEYS: the sorted set; ARGV: due up to (ms), lease end (ms), limit
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(due) do
  redis.call('ZADD', KEYS[1], ARGV[2], id)
end
return due
