-- admit_user.lua: count a user's connection attempt and take a connection slot, atomically.
--
-- KEYS[1]  {prefix}:{u:<sub>}:slots     zset; member = conn_id, score = lease expiry (ms, Redis TIME)
-- KEYS[2]  {prefix}:{u:<sub>}:rate      zset; member = nonce, score = admission time (ms)
-- KEYS[3]  {prefix}:{u:<sub>}:info      hash; field = conn_id, value = ConnectionInfo as JSON
-- KEYS[4]  {prefix}:{u:<sub>}:released  zset of conn_ids released lately (release.lua)
-- ARGV[1]  conn_id
-- ARGV[2]  rate_limit: admitted attempts allowed per window
-- ARGV[3]  max_connections: live slots allowed
-- ARGV[4]  lease_seconds
-- ARGV[5]  window in seconds
-- ARGV[6]  nonce: unique per call, so a retried call cannot count twice
-- ARGV[7]  the connection's info as JSON, or "" for none (a re-admission keeps the stored one)
--
-- Returns {verdict, retry_after_seconds}:
--   {0, 0}  admitted: the attempt is counted and conn_id holds a slot until now + lease
--   {2, n}  rate_limited; n = seconds until the oldest admitted attempt leaves the window (>= 1)
--   {3, 0}  connection_limit: max_connections unexpired slots are held
-- A refused attempt is not counted and takes no slot. A conn_id that already holds a slot is
-- re-admitted (its lease is extended) without counting against the max; an admitted conn_id is no
-- longer marked released. All keys share the hash tag {u:<sub>} (one cluster slot); they expire
-- when their last entry would, so idle users vanish.
-- The info of a slot goes with it: expired slots lose their info here too.

local conn_id = ARGV[1]
local rate_limit = tonumber(ARGV[2])
local max_connections = tonumber(ARGV[3])
local lease_ms = tonumber(ARGV[4]) * 1000
local window_ms = tonumber(ARGV[5]) * 1000
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- Slots of a killed worker are never released: their leases simply run out.
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for i = 1, #expired do
  redis.call('ZREM', KEYS[1], expired[i])
  redis.call('HDEL', KEYS[3], expired[i])
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window_ms)

if redis.call('ZCARD', KEYS[2]) >= rate_limit then
  local oldest = tonumber(redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')[2])
  return {2, math.max(1, math.ceil((oldest + window_ms - now) / 1000))}
end
if not redis.call('ZSCORE', KEYS[1], conn_id)
    and redis.call('ZCARD', KEYS[1]) >= max_connections then
  return {3, 0}
end

redis.call('ZADD', KEYS[2], now, ARGV[6])
redis.call('PEXPIRE', KEYS[2], window_ms)
redis.call('ZADD', KEYS[1], now + lease_ms, conn_id)
redis.call('ZREM', KEYS[4], conn_id)
if ARGV[7] ~= '' then
  redis.call('HSET', KEYS[3], conn_id, ARGV[7])
end
-- The keys live as long as the longest lease (other workers may use another lease length).
local last = tonumber(redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2])
redis.call('PEXPIREAT', KEYS[1], last + 1000)
redis.call('PEXPIREAT', KEYS[3], last + 1000)
return {0, 0}
