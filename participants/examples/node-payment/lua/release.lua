-- Let go of a step's lock after this process failed to answer, so that the
-- redelivery need not wait for the lease to run out.
-- KEYS: step lock; ARGV: lock token
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
