-- check_ip.lua: refuse a banned IP, else apply its sliding-window attempt limit, atomically.
--
-- KEYS[1]  {prefix}:{ip:<ip>}:ban   string; present while the IP is banned (TTL = ban left)
-- KEYS[2]  {prefix}:{ip:<ip>}:rate  zset; member = nonce, score = admission time (ms, Redis TIME)
-- ARGV[1]  limit: admitted attempts allowed per window
-- ARGV[2]  window in seconds
-- ARGV[3]  nonce: unique per call, so a retried call cannot count twice
--
-- Returns {verdict, retry_after_seconds}:
--   {0, 0}  admitted (the attempt is counted)
--   {1, n}  ip_banned; n = seconds the ban has left (0 if it has no expiry)
--   {2, n}  rate_limited; n = seconds until the oldest admitted attempt leaves the window (>= 1)
-- Refused attempts are not counted. Both keys share the hash tag {ip:<ip>} (one cluster slot).
-- Needs Redis >= 5 (scripts replicated by effects, so TIME is allowed before writes).

local ban_ms = redis.call('PTTL', KEYS[1])
if ban_ms > 0 then
  return {1, math.ceil(ban_ms / 1000)}
elseif ban_ms == -1 then
  return {1, 0}
end

local limit = tonumber(ARGV[1])
local window_ms = tonumber(ARGV[2]) * 1000
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- An attempt at t counts while now < t + window.
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window_ms)
if redis.call('ZCARD', KEYS[2]) >= limit then
  local oldest = tonumber(redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')[2])
  return {2, math.max(1, math.ceil((oldest + window_ms - now) / 1000))}
end
redis.call('ZADD', KEYS[2], now, ARGV[3])
redis.call('PEXPIRE', KEYS[2], window_ms)
return {0, 0}
