-- Claim an Idempotency-Key for one request, or say what holds it (idempotency.py's glossary).
--   KEYS[1]  the key's hash: fp (the first request's fingerprint), owner, lease (until, ms on
--            Redis's clock), rep (1: the operation is repeatable), answer (once kept)
--   ARGV[1]  fingerprint, ARGV[2] owner token, ARGV[3] lease (ms), ARGV[4] keep the key for (ms),
--   ARGV[5]  1 if the operation is repeatable, else 0
-- Returns {'claimed'} | {'kept', fp, answer} | {'running', fp} | {'abandoned', fp}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = string.format('%.0f', now + tonumber(ARGV[3]))
local held = redis.call('HMGET', KEYS[1], 'fp', 'lease', 'rep', 'answer')
if not held[1] then
  redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'owner', ARGV[2], 'lease', lease, 'rep', ARGV[5])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return {'claimed'}
end
if held[4] then
  return {'kept', held[1], held[4]}
end
if tonumber(held[2]) > now or held[1] ~= ARGV[1] then
  return {'running', held[1]}
end
if held[3] == '1' then  -- its holder went away; running it again is safe
  redis.call('HSET', KEYS[1], 'owner', ARGV[2], 'lease', lease)
  return {'claimed'}
end
return {'abandoned', held[1]}
