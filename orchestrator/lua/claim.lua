-- Claim what is due in a sorted set (a bucket's deadlines, or its index of
-- unconfirmed outboxes) by moving it forward by a lease, never by removing
-- it: if the claimer dies, the item is due again when the lease runs out,
-- and no other claimer takes it in the meantime.
-- KEYS: the sorted set, and optionally the bucket's lease (same slot)
-- ARGV: due up to (ms), lease end (ms), limit, and with a lease key: who claims
-- A claimer that no longer holds the bucket's lease (it was paused past it,
-- and another orchestrator took the bucket over) claims nothing.
if KEYS[2] and redis.call('GET', KEYS[2]) ~= ARGV[4] then
  return {}
end
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(due) do
  redis.call('ZADD', KEYS[1], ARGV[2], id)
end
return due
