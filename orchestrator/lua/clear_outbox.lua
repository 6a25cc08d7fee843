-- Forget an outbox once the broker confirmed it, unless a newer transition
-- has replaced it in the meantime.
-- KEYS: outbox hash; ARGV: the rev whose messages were confirmed
if redis.call('HGET', KEYS[1], 'rev') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
