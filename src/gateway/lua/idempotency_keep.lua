-- Keep the answer of the request that holds an Idempotency-Key, or release its claim.
--   KEYS[1]  the key's hash (idempotency_claim.lua)
--   ARGV[1]  the holder's owner token, ARGV[2] keep the key for (ms),
--   ARGV[3]  the answer ('' releases the claim), ARGV[4] the largest answer kept (bytes)
-- Returns 1 done, 0 not the holder (its lease lapsed and another request took the key)
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then
  return 0
end
if ARGV[3] == '' then
  redis.call('DEL', KEYS[1])
  return 1
end
if string.len(ARGV[3]) > tonumber(ARGV[4]) then
  return redis.error_reply('an answer over ' .. ARGV[4] .. ' bytes is not kept')
end
redis.call('HSET', KEYS[1], 'answer', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
