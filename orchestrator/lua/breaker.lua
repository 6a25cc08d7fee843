-- Circuit breakers shared by every orchestrator: one hash per breaker.
--   state        closed | open | half_open (absent: closed, no failures)
--   fails        the newest counted failures of a closed breaker, ms, oldest first
--                (at most `failures` of them: all the window needs)
--   opened_at    when it opened (ms)
--   trial_owner  the saga whose command is the half-open trial
--   trial_until  when that trial's lease runs out (ms): then another may try
-- Time comes from the caller, like decide()'s `now`.
--
-- ARGV[1] is the operation, ARGV[2] now (ms), ARGV[3] the caller's saga id.
--
-- peek   KEYS: breakers; ARGV[4..]: each breaker's cool-down (ms).
--        Per breaker: 0 closed, 1 open (skip it), 2 a trial may go (cooled
--        down, or the trial is the caller's own, or its lease ran out).
-- trial  KEYS: one breaker; ARGV[4] cool-down (ms), ARGV[5] lease (ms).
--        Claims the half-open trial for the caller: 0 refused (open, or
--        another saga's trial runs), 1 granted, 2 granted and the breaker
--        turned half-open just now. Atomic: one trial among all callers.
-- record KEYS: breakers; ARGV[4..]: per breaker 4 values: outcome (1 a
--        success, 0 a counted failure), failures, window (ms), cool-down (ms).
--        Per breaker: '' unchanged, 'open' or 'closed' if this result moved it.
local op, now, owner = ARGV[1], tonumber(ARGV[2]), ARGV[3]

local function may_try(key, cool_down)
  local state, opened_at, trial_owner, trial_until =
    unpack(redis.call('HMGET', key, 'state', 'opened_at', 'trial_owner', 'trial_until'))
  if state == 'open' then
    if now < tonumber(opened_at) + cool_down then
      return 1
    end
    return 2
  end
  if state == 'half_open' then
    if trial_owner == owner or now >= tonumber(trial_until) then
      return 2
    end
    return 1
  end
  return 0
end

if op == 'peek' then
  local out = {}
  for i, key in ipairs(KEYS) do
    out[i] = may_try(key, tonumber(ARGV[3 + i]))
  end
  return out
end

if op == 'trial' then
  local key = KEYS[1]
  local seen = may_try(key, tonumber(ARGV[4]))
  if seen == 0 then
    return 1
  end
  if seen == 1 then
    return 0
  end
  local was = redis.call('HGET', key, 'state')
  redis.call('HSET', key, 'state', 'half_open', 'trial_owner', owner, 'trial_until', now + tonumber(ARGV[5]))
  if was == 'open' then
    return 2
  end
  return 1
end

if op == 'record' then
  local out = {}
  for i, key in ipairs(KEYS) do
    local base = 3 + (i - 1) * 4
    local ok, failures, window = ARGV[base + 1] == '1', tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3])
    local state = redis.call('HGET', key, 'state') or 'closed'
    out[i] = ''
    if ok then
      -- A success closes a half-open breaker (the trial's, or a straggler's:
      -- either says the participant answers). An open one waits out its
      -- cool-down: a success then is a reply to a command sent before it opened.
      if state == 'half_open' then
        redis.call('DEL', key)
        out[i] = 'closed'
      end
    elseif state == 'half_open' then
      redis.call('HSET', key, 'state', 'open', 'opened_at', now)
      redis.call('HDEL', key, 'trial_owner', 'trial_until')
      out[i] = 'open'
    elseif state == 'closed' then
      local fails = {}
      for stamp in string.gmatch(redis.call('HGET', key, 'fails') or '', '%S+') do
        if tonumber(stamp) > now - window then
          fails[#fails + 1] = stamp
        end
      end
      fails[#fails + 1] = tostring(now)
      while #fails > failures do
        table.remove(fails, 1)
      end
      if #fails >= failures then
        redis.call('DEL', key)
        redis.call('HSET', key, 'state', 'open', 'opened_at', now)
        out[i] = 'open'
      else
        redis.call('HSET', key, 'state', 'closed', 'fails', table.concat(fails, ' '))
        -- A closed breaker's failures older than the window count for nothing.
        redis.call('PEXPIRE', key, window)
      end
    end
  end
  return out
end

return redis.error_reply('breaker.lua: unknown operation ' .. tostring(op))
