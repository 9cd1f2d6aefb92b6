-- record_auth_failure.lua: count a failed authentication from an IP; ban it at the threshold.
--
-- KEYS[1]  {prefix}:{ip:<ip>}:fails  zset; member = nonce, score = failure time (ms, Redis TIME)
-- KEYS[2]  {prefix}:{ip:<ip>}:ban    string; present while the IP is banned (TTL = ban left)
-- ARGV[1]  threshold: failures within the window that trigger a ban
-- ARGV[2]  window in seconds
-- ARGV[3]  ban_seconds
-- ARGV[4]  nonce: unique per call, so a retried call cannot count twice
--
-- Returns 1 when this call banned the IP, else 0. An IP already banned is not counted; after a
-- ban the failure log is cleared, so counting starts afresh when the ban ends. Both keys share the
-- hash tag {ip:<ip>} (one cluster slot).

if redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end

local threshold = tonumber(ARGV[1])
local window_ms = tonumber(ARGV[2]) * 1000
local ban_ms = tonumber(ARGV[3]) * 1000
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window_ms)
redis.call('ZADD', KEYS[1], now, ARGV[4])
if redis.call('ZCARD', KEYS[1]) >= threshold then
  redis.call('DEL', KEYS[1])
  redis.call('SET', KEYS[2], 'auto', 'PX', ban_ms)
  return 1
end
redis.call('PEXPIRE', KEYS[1], window_ms)
return 0
