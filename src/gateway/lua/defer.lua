-- Push a GCRA schedule so that no slot is granted before now + pause ("too frequent").
--   KEYS[1]  the schedule (TAT, microseconds of Redis's clock)
--   ARGV[1]  pause, microseconds
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local pushed = math.max(tat, now + tonumber(ARGV[1]))
redis.call('SET', KEYS[1], string.format('%.0f', pushed), 'PX', math.ceil((pushed - now) / 1000) + 1000)
return 1
