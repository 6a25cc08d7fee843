-- Forget outboxes once the broker confirmed them, unless a newer transition
-- has replaced one in the meantime.
-- KEYS: the index of unconfirmed outboxes, then the outbox hashes
-- ARGV: for each outbox, its saga id and the rev whose messages were confirmed
local cleared = 0
for i = 2, #KEYS do
  local id, rev = ARGV[2 * i - 3], ARGV[2 * i - 2]
  if redis.call('HGET', KEYS[i], 'rev') == rev then
    cleared = cleared + redis.call('DEL', KEYS[i])
    redis.call('ZREM', KEYS[1], id)
  end
end
return cleared
