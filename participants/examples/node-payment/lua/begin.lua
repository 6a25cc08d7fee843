-- Before a command runs: the reply given before to this message_id, or the
-- step's lock and what is recorded of the step.
-- KEYS: replies seen (by message_id), step lock, step record
-- ARGV: lock token, lease in ms
-- Returns {'seen', reply} | {'busy'} | {'go', field, value, ...}
local seen = redis.call('GET', KEYS[1])
if seen then
  return {'seen', seen}
end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then
  return {'busy'}
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
local record = redis.call('HGETALL', KEYS[3])
table.insert(record, 1, 'go')
return record
