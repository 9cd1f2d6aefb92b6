-- renew.lua: extend the leases of one user's live connections; re-establish those that are gone.
--
-- KEYS[1]  {prefix}:{u:<sub>}:slots  zset; member = conn_id, score = lease expiry (ms, Redis TIME)
-- KEYS[2]  {prefix}:{u:<sub>}:info   hash; field = conn_id, value = ConnectionInfo as JSON
-- ARGV[1]  lease_seconds
-- ARGV[2*i], ARGV[2*i+1]  conn_id and ConnectionInfo JSON of the i-th open connection
--
-- Returns {renewed, revived}: leases extended, and slots re-established. The caller renews only
-- connections that are open on its worker, so a conn_id whose slot is gone (its lease ran out
-- during an outage longer than the lease, or Redis lost its data) takes it again, with its info,
-- even past max_connections: an open connection is counted. A live slot keeps its stored info
-- (a re-admission may have replaced it) and gets the given one only if it has none (evicted, or
-- admitted without). Expired slots of other connections (and their info) are purged first. Both
-- keys share the hash tag {u:<sub>}; they expire one second after the last lease.

local lease_ms = tonumber(ARGV[1]) * 1000
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = now + lease_ms

local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for i = 1, #expired do
  redis.call('ZREM', KEYS[1], expired[i])
  redis.call('HDEL', KEYS[2], expired[i])
end
local renewed, revived = 0, 0
for i = 2, #ARGV - 1, 2 do
  local conn_id, info = ARGV[i], ARGV[i + 1]
  if redis.call('ZSCORE', KEYS[1], conn_id) then
    renewed = renewed + 1
    redis.call('HSETNX', KEYS[2], conn_id, info)
  else
    revived = revived + 1
    redis.call('HSET', KEYS[2], conn_id, info)
  end
  redis.call('ZADD', KEYS[1], expiry, conn_id)
end
if redis.call('ZCARD', KEYS[1]) > 0 then
  local last = tonumber(redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2])
  redis.call('PEXPIREAT', KEYS[1], last + 1000)
  redis.call('PEXPIREAT', KEYS[2], last + 1000)
else
  redis.call('DEL', KEYS[2])
end
return {renewed, revived}
