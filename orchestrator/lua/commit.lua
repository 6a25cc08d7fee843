-- Write one saga transition, if nobody has written the saga since we read it.
-- KEYS: saga hash, history list, outbox hash, the saga's deadline shard,
--       the index of unconfirmed outboxes
-- ARGV: expected rev ('0': the saga must not exist), new rev, doc, status,
--       state, saga type, updated_at (s), outbox messages ('' for none),
--       retention seconds (0: keep), history cap, saga id, wake time in ms
--       ('' for none), updated_at in ms, history entries...
if (redis.call('HGET', KEYS[1], 'rev') or '0') ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'rev', ARGV[2], 'doc', ARGV[3], 'status', ARGV[4],
           'state', ARGV[5], 'type', ARGV[6], 'updated_at', ARGV[7])
-- The outbox holds the messages of the newest transition only: a newer
-- transition means the saga has moved past whatever an older one sent.
if ARGV[8] == '' then
  redis.call('DEL', KEYS[3])
  redis.call('ZREM', KEYS[5], ARGV[11])
else
  redis.call('HSET', KEYS[3], 'rev', ARGV[2], 'messages', ARGV[8])
  redis.call('ZADD', KEYS[5], ARGV[13], ARGV[11])
end
if ARGV[12] == '' then
  redis.call('ZREM', KEYS[4], ARGV[11])
else
  redis.call('ZADD', KEYS[4], ARGV[12], ARGV[11])
end
if #ARGV > 13 then
  redis.call('RPUSH', KEYS[2], unpack(ARGV, 14))
  redis.call('LTRIM', KEYS[2], -tonumber(ARGV[10]), -1)
end
local retention = tonumber(ARGV[9])
if retention > 0 then
  for i = 1, 3 do
    redis.call('EXPIRE', KEYS[i], retention)
  end
end
return 1
