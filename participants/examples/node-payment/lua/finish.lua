-- After a command ran: keep its reply for repeats of the message_id, record
-- what the step did, and let go of the step's lock, all at once.
-- KEYS: replies seen, step lock, step record
-- ARGV: lock token, seconds to keep, reply, then field/value pairs of the record
redis.call('SET', KEYS[1], ARGV[3], 'EX', ARGV[2])
if #ARGV > 3 then
  redis.call('HSET', KEYS[3], unpack(ARGV, 4))
  redis.call('EXPIRE', KEYS[3], ARGV[2])
end
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
end
return 1
