-- Forget outboxes once the broker confirmed them, unless a newer transition
-- has replaced one in the meantime.
-- KEYS: outbox hashes; ARGV: for each, the rev whose messages were confirmed
local cleared = 0
for i, key in ipairs(KEYS) do
  if redis.call('HGET', key, 'rev') == ARGV[i] then
    cleared = cleared + redis.call('DEL', key)
  end
end
return cleared
