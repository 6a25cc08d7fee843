-- claim.lua for many buckets in one call, on a single Redis: a tick of the
-- deadline loop is then one command, not one per bucket. (On a Redis Cluster
-- the buckets live in other slots, and each is claimed on its own.)
-- KEYS: each bucket's sorted set, then, with an owner, each bucket's lease in the same order
-- ARGV: due up to (ms), lease end (ms), limit per bucket, and with leases: who claims
local owner = ARGV[4]
local count = owner and #KEYS / 2 or #KEYS
local claimed = {}
for i = 1, count do
  if not owner or redis.call('GET', KEYS[count + i]) == owner then
    local due = redis.call('ZRANGEBYSCORE', KEYS[i], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
    for _, id in ipairs(due) do
      redis.call('ZADD', KEYS[i], ARGV[2], id)
      claimed[#claimed + 1] = id
    end
  end
end
return claimed
