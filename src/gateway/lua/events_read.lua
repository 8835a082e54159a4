-- Read a tenant's stream after a position, with the newest id trimmed from it, in one atomic step
-- (read apart, a trim between the two could go unnoticed).
--   KEYS[1]  the stream, KEYS[2] the newest id trimmed from it (events_add.lua)
--   ARGV[1]  the position (entries after it are read), ARGV[2] how many (0: none)
-- Returns {exists (0/1), entries, the newest id trimmed or false, the last id or false}.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {0, {}, false, false}
end
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local entries = {}
if tonumber(ARGV[2]) > 0 then
  entries = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[2])
end
return {1, entries, redis.call('GET', KEYS[2]), last[1][1]}
