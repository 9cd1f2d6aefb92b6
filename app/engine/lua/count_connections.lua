-- count_connections.lua: the number of live (unexpired) slots of one user.
--
-- KEYS[1]  {prefix}:{u:<sub>}:slots  zset; member = conn_id, score = lease expiry (ms, Redis TIME)
-- KEYS[2]  {prefix}:{u:<sub>}:info   hash; field = conn_id, value = ConnectionInfo as JSON
-- (no ARGV)
--
-- Returns the count after purging expired slots (and their info).

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for i = 1, #expired do
  redis.call('ZREM', KEYS[1], expired[i])
  redis.call('HDEL', KEYS[2], expired[i])
end
return redis.call('ZCARD', KEYS[1])
