-- Delete the fleet's UserSig only if it is the one Tencent rejected (a newer one may be in place).
--   KEYS[1]  the signature (JSON {"value": ..., "expires_at": ...})
--   ARGV[1]  the rejected UserSig
local current = redis.call('GET', KEYS[1])
if current and cjson.decode(current).value == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
