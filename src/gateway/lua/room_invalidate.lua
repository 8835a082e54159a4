-- Forget a room and fence off fills that began before now.
--   KEYS[1]  the room hash, KEYS[2] its generation
--   ARGV[1]  how long the generation is kept (ms): longer than any fill can take
redis.call('DEL', KEYS[1])
local generation = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return generation
