-- renew.lua: extend the leases of one user's live slots.
--
-- KEYS[1]  {prefix}:{u:<sub>}:slots  zset; member = conn_id, score = lease expiry (ms, Redis TIME)
-- KEYS[2]  {prefix}:{u:<sub>}:info   hash; field = conn_id, value = ConnectionInfo as JSON
-- ARGV[1]  lease_seconds
-- ARGV[2..n]  conn_ids to renew
--
-- Returns the number of leases extended. Expired slots (and their info) are purged first and never
-- brought back (ZADD XX): once a lease has run out its slot may already be someone else's.

local lease_ms = tonumber(ARGV[1]) * 1000
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for i = 1, #expired do
  redis.call('ZREM', KEYS[1], expired[i])
  redis.call('HDEL', KEYS[2], expired[i])
end
local renewed = 0
for i = 2, #ARGV do
  renewed = renewed + redis.call('ZADD', KEYS[1], 'XX', 'CH', now + lease_ms, ARGV[i])
end
if redis.call('ZCARD', KEYS[1]) > 0 then
  local last = tonumber(redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2])
  redis.call('PEXPIREAT', KEYS[1], last + 1000)
  redis.call('PEXPIREAT', KEYS[2], last + 1000)
else
  redis.call('DEL', KEYS[2])
end
return renewed
