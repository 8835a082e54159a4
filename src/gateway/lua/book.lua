-- Book slots of a GCRA schedule (no burst) for several callers at once, fairly, unless the
-- tenant is paused: gateway/budget/schedule.py's `book`, line for line (the contract tests run
-- the same cases on both). Redis's own clock is the only clock.
--   KEYS[1]  the schedule: theoretical arrival time (TAT), microseconds of Redis's clock
--   KEYS[2]  the tenant's pause marker ("<ErrorCode> <reason>", expiring with the pause)
--   KEYS[3]  the callers competing for it (hash): f:<caller> its fair TAT (us),
--            s:<caller> "<weight> <last demand, us>"
--   ARGV[1..6]  interval, horizon, borrow, active, unit, lead (microseconds; see schedule.Terms)
--   ARGV[7]  h, the number of slots handed back unused, then h pairs: start, end (us)
--   then one quadruple per caller asking: name, weight, count, within (us)
-- Returns  {1, now_us, next_at_us or -1, k1, start..., k2, start..., ...}  the slots per caller,
--          in the order asked (each `interval` long)
--          {2, left_ms, marker}  paused: no call for left_ms
local left_ms = redis.call('PTTL', KEYS[2])
if left_ms > 0 then
  return {2, left_ms, redis.call('GET', KEYS[2])}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval, horizon = tonumber(ARGV[1]), tonumber(ARGV[2])
local borrow, active = tonumber(ARGV[3]), tonumber(ARGV[4])
local unit = tonumber(ARGV[5])
if unit == 0 then unit = interval end
local soon = now + tonumber(ARGV[6])  -- no slot before it: its answer reaches the waiters this late
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')

local handed = tonumber(ARGV[7])
local backs = {}
for i = 1, handed do
  backs[i] = {tonumber(ARGV[6 + 2 * i]), tonumber(ARGV[7 + 2 * i])}
end
table.sort(backs, function(a, b) return a[2] > b[2] end)
for _, back in ipairs(backs) do
  if tat == back[2] then tat = back[1] end
end

local wants = {}
for i = 8 + 2 * handed, #ARGV, 4 do
  wants[#wants + 1] = {name = ARGV[i], weight = tonumber(ARGV[i + 1]), left = tonumber(ARGV[i + 2]),
                       within = tonumber(ARGV[i + 3]), slots = {}}
  redis.call('HSET', KEYS[3], 's:' .. ARGV[i], ARGV[i + 1] .. ' ' .. string.format('%.0f', now))
end

local fair, total = {}, 0
local state = redis.call('HGETALL', KEYS[3])
for i = 1, #state, 2 do
  local kind, name = string.sub(state[i], 1, 1), string.sub(state[i], 3)
  if kind == 's' then
    local weight, last = string.match(state[i + 1], '(%S+) (%S+)')
    if tonumber(last) < now - active then
      redis.call('HDEL', KEYS[3], 's:' .. name, 'f:' .. name)
    else
      total = total + tonumber(weight)
    end
  end
end
for _, want in ipairs(wants) do
  local stored = redis.call('HGET', KEYS[3], 'f:' .. want.name)
  fair[want.name] = stored and tonumber(stored) or -math.huge
end

local start = math.max(tat, soon)
while start <= now + horizon do
  local best, best_borrowing = nil, nil
  for _, want in ipairs(wants) do
    if want.left > 0 and start <= now + want.within then
      local f = fair[want.name]
      local borrowing = f >= start + interval
      if not (borrowing and start > soon + borrow) then
        if best == nil or (best_borrowing and not borrowing)
            or (best_borrowing == borrowing and f < fair[best.name]) then
          best, best_borrowing = want, borrowing
        end
      end
    end
  end
  if best == nil then break end
  tat = start + interval
  best.slots[#best.slots + 1] = start
  best.left = best.left - 1
  if not best_borrowing then
    fair[best.name] = math.max(fair[best.name], start) + unit * total / best.weight
  end
  start = math.max(tat, soon)
end

local keep = math.ceil((math.max(tat, now) - now + active) / 1000) + 1000
local next_at, reply = -1, {1, now, -1}
for _, want in ipairs(wants) do
  if fair[want.name] ~= -math.huge then
    redis.call('HSET', KEYS[3], 'f:' .. want.name, string.format('%.0f', fair[want.name]))
  end
  reply[#reply + 1] = #want.slots
  for _, s in ipairs(want.slots) do reply[#reply + 1] = s end
  if want.left > 0 then
    local reach = math.min(tat - borrow, math.max(fair[want.name] - interval, tat) - horizon / 2)
    if next_at == -1 or reach < next_at then next_at = reach end
  end
end
if next_at ~= -1 then reply[3] = math.max(now, next_at) end
redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', keep)
redis.call('PEXPIRE', KEYS[3], keep)
return reply
