-- A replica's heartbeat: record it, forget replicas silent past the horizon, and count the
-- ones that fell silent without leaving (they may be cut off from Redis, pacing on their own).
--   KEYS[1]  the fleet: sorted set, replica id -> its last beat (microseconds of Redis's clock)
--   KEYS[2]  when that set was begun (microseconds of Redis's clock)
--   ARGV[1]  this replica's id
--   ARGV[2]  lapsed: silent for longer than this (microseconds)
--   ARGV[3]  forgotten: silent for longer than this (microseconds)
-- Returns  {lapsed, age_us, size}: the number of lapsed replicas (never this one: it has just
--          beaten), how long the set has been kept (Redis lost it, or the whole fleet was
--          silent past the horizon: it starts again from 0), and the fleet's size: every
--          replica not yet forgotten, this one and the lapsed ones included
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local keep = math.ceil(tonumber(ARGV[3]) / 1000)
local born = tonumber(redis.call('GET', KEYS[2]) or '')
if not born or redis.call('EXISTS', KEYS[1]) == 0 then
  born = now
  redis.call('SET', KEYS[2], string.format('%.0f', born))
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('(%.0f', now - tonumber(ARGV[3])))
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('PEXPIRE', KEYS[1], keep)
redis.call('PEXPIRE', KEYS[2], keep)
local lapsed = redis.call('ZCOUNT', KEYS[1], '-inf', string.format('(%.0f', now - tonumber(ARGV[2])))
return {lapsed, now - born, redis.call('ZCARD', KEYS[1])}
