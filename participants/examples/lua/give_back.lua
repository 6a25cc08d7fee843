-- Return what an entry took, once. An entry that never took anything is
-- marked returned all the same, so a late take finds it and is refused.
-- KEYS: stock hash, entries hash, returns hash
-- ARGV: entry id
-- Returns 1 when something went back now, 0 otherwise.
if redis.call('HSETNX', KEYS[3], ARGV[1], '1') == 0 then
  return 0
end
local taken = redis.call('HGET', KEYS[2], ARGV[1])
if not taken then
  return 0
end
for field, amount in pairs(cjson.decode(taken)) do
  redis.call('HINCRBY', KEYS[1], field, amount)
end
return 1
