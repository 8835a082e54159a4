-- Store a filled room unless a write invalidated it since the fill began.
--   KEYS[1]  the room hash, KEYS[2] its generation
--   ARGV[1]  body, ARGV[2] the generation the fill started at, ARGV[3] keep for (ms)
-- Returns 1 stored, 0 refused (the room was invalidated meanwhile)
if tonumber(redis.call('GET', KEYS[2]) or '0') ~= tonumber(ARGV[2]) then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('HSET', KEYS[1], 't', string.format('%.0f', now), 'b', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
