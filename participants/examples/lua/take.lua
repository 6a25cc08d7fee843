-- Take amounts from a stock, once per entry id, all or nothing.
-- KEYS: stock hash, entries hash, returns hash
-- ARGV: entry id, the level of a field not seen before ('' for 0), then
--       field/amount pairs
-- Returns 1 when taken (now or before), 0 when the entry was given back
-- already (a late take), or the first field short of stock.
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then
  return 0
end
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then
  return 1
end
if ARGV[2] ~= '' then
  for i = 3, #ARGV, 2 do
    redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[2])
  end
end
for i = 3, #ARGV, 2 do
  local have = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  if have < tonumber(ARGV[i + 1]) then
    return ARGV[i]
  end
end
local taken = {}
for i = 3, #ARGV, 2 do
  -- 0 - n, not -n: Lua's -0 reaches Redis as "-0", which is not an integer to HINCRBY.
  redis.call('HINCRBY', KEYS[1], ARGV[i], 0 - tonumber(ARGV[i + 1]))
  taken[ARGV[i]] = tonumber(ARGV[i + 1])
end
redis.call('HSET', KEYS[2], ARGV[1], cjson.encode(taken))
return 1
