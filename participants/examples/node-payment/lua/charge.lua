-- Charge a customer's card once per saga step, within its credit limit.
-- KEYS: credit left by customer (hash), charges by step (hash), refunds by step (hash)
-- ARGV: step key, credit limit of a new customer, customer, amount
-- Returns 1 charged (now or before), 0 refunded already (a late charge), -1 not enough credit.
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then
  return 0
end
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then
  return 1
end
redis.call('HSETNX', KEYS[1], ARGV[3], ARGV[2])
if tonumber(redis.call('HGET', KEYS[1], ARGV[3])) < tonumber(ARGV[4]) then
  return -1
end
redis.call('HINCRBY', KEYS[1], ARGV[3], -tonumber(ARGV[4]))
redis.call('HSET', KEYS[2], ARGV[1], cjson.encode({[ARGV[3]] = tonumber(ARGV[4])}))
return 1
