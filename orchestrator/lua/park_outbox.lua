-- Drop an outbox that can never be published (its saga was told why), if no
-- newer transition has replaced it meanwhile.
-- KEYS: the outbox hash, the bucket's index of unconfirmed outboxes
-- ARGV: saga id, the rev of the outbox that was refused
if redis.call('HGET', KEYS[1], 'rev') ~= ARGV[2] then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
