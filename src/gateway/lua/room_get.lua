-- A cached room, its age and its generation, in one round trip.
--   KEYS[1]  the room (hash: t = stored at, microseconds of Redis's clock; b = body)
--   KEYS[2]  the room's generation (incremented by every invalidation)
-- Returns  {generation}                                  nothing cached
--          {generation, age_us, body, stored_at_us}      cached
local generation = tonumber(redis.call('GET', KEYS[2]) or '0')
local entry = redis.call('HMGET', KEYS[1], 't', 'b')
if not entry[1] then
  return {generation}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
return {generation, now - tonumber(entry[1]), entry[2], tonumber(entry[1])}
