-- Book the next slot of a GCRA schedule (no burst), unless the tenant is paused.
-- Redis's own clock is the only clock, so replica clocks do not matter.
--   KEYS[1]  the schedule: theoretical arrival time (TAT), microseconds of Redis's clock
--   KEYS[2]  the tenant's pause marker ("<ErrorCode> <reason>", expiring with the pause)
--   ARGV[1]  slot interval, microseconds
--   ARGV[2]  longest wait the caller accepts, microseconds
--   ARGV[3], ARGV[4]  optional: a slot handed back unused (its start, and the TAT its booking
--            left); if the TAT is still that, nobody booked after it and it is undone first
-- Returns  {1, wait_us, now_us, tat_us}  granted: call after wait_us (now_us: Redis's clock, to
--                                   map the slot; tat_us: the TAT this booking left, to hand back)
--          {0, retry_after_us}      refused: nothing was booked
--          {2, left_ms, marker}     paused: no call for left_ms
local left = redis.call('PTTL', KEYS[2])
if left > 0 then
  return {2, left, redis.call('GET', KEYS[2])}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if ARGV[4] and tat == tonumber(ARGV[4]) then
  tat = tonumber(ARGV[3])
end
local start = math.max(tat, now)
local wait = start - now
if wait > tonumber(ARGV[2]) then
  return {0, wait - tonumber(ARGV[2])}
end
local booked = start + tonumber(ARGV[1])
redis.call('SET', KEYS[1], string.format('%.0f', booked), 'PX', math.ceil((booked - now) / 1000) + 1000)
return {1, wait, now, booked}
