-- After a participant ran a command: record the step's outcome, cache the
-- reply for repeats of the same message, and release the step's lock.
-- KEYS: reply cache, step lock, step record
-- ARGV: lock token, ttl seconds, reply, then field/value pairs for the record
redis.call('SET', KEYS[1], ARGV[3], 'EX', ARGV[2])
if #ARGV > 3 then
  redis.call('HSET', KEYS[3], unpack(ARGV, 4))
  redis.call('EXPIRE', KEYS[3], ARGV[2])
end
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
end
return 1
