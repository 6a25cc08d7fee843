-- Give up a step's lock after a delivery failed in this process, so that its
-- redelivery runs at once instead of waiting the lock out. (A process that
-- dies holding it leaves it to expire.)
-- KEYS: step lock; ARGV: lock token
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
