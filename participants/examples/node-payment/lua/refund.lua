-- Refund what a saga step charged, once. A step never charged is marked
-- refunded all the same, so that a late charge is refused.
-- KEYS: credit left by customer, charges by step, refunds by step
-- ARGV: step key
-- Returns 1 when money went back now, 0 otherwise.
if redis.call('HSETNX', KEYS[3], ARGV[1], '1') == 0 then
  return 0
end
local charged = redis.call('HGET', KEYS[2], ARGV[1])
if not charged then
  return 0
end
for customer, amount in pairs(cjson.decode(charged)) do
  redis.call('HINCRBY', KEYS[1], customer, amount)
end
return 1
