-- Write a note on one saga (a refused reply), if nobody has written the saga
-- since we read it. Where the saga is stays as it was: no state, outbox or
-- deadline changes, so a message still unconfirmed is still re-sent.
-- KEYS: saga hash, history list
-- ARGV: expected rev, new rev, doc, updated_at (s), history cap, history entries...
if (redis.call('HGET', KEYS[1], 'rev') or '0') ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'rev', ARGV[2], 'doc', ARGV[3], 'updated_at', ARGV[4])
if #ARGV > 5 then
  redis.call('RPUSH', KEYS[2], unpack(ARGV, 6))
  redis.call('LTRIM', KEYS[2], -tonumber(ARGV[5]), -1)
end
return 1
