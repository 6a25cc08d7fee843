-- Take, renew or give up one bucket's lease (SET NX PX, renewed by its holder).
-- KEYS: the bucket's lease; ARGV: who asks, lease length (ms), 'take' or 'give'
-- Returns 1 when the asker holds the lease afterwards, 0 otherwise.
local holder = redis.call('GET', KEYS[1])
if ARGV[3] == 'give' then
  if holder == ARGV[1] then
    redis.call('DEL', KEYS[1])
  end
  return 0
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
