-- Before a participant runs a command: answer a repeated one from the cache,
-- or take the step's lock and read what was done for the step before.
-- KEYS: reply cache (by message_id), step lock, step record
-- ARGV: lock token, lock ms, the command's action
-- An action about to run marks the step `started` (the record returned is
-- the one before): killed half-way, its step then reads as maybe applied,
-- and a compensation that overtakes the redelivered action still undoes it.
-- Returns {'cached', reply} | {'busy'} | {'run', field, value, ...}
local cached = redis.call('GET', KEYS[1])
if cached then
  return {'cached', cached}
end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then
  return {'busy'}
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
local record = redis.call('HGETALL', KEYS[3])
if ARGV[3] == 'do' then
  local done = redis.call('HMGET', KEYS[3], 'do', 'compensated')
  if done[1] ~= 'success' and not done[2] then
    redis.call('HSET', KEYS[3], 'do', 'started')
  end
end
table.insert(record, 1, 'run')
return record
