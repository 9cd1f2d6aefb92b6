-- renew.lua: extend the leases of one user's live connections; re-establish those that are gone,
-- within the user's limit.
--
-- KEYS[1]  {prefix}:{u:<sub>}:slots     zset; member = conn_id, score = lease expiry (ms, Redis TIME)
-- KEYS[2]  {prefix}:{u:<sub>}:info      hash; field = conn_id, value = ConnectionInfo as JSON
-- KEYS[3]  {prefix}:{u:<sub>}:released  zset; member = conn_id, score = end of the mark (ms)
-- ARGV[1]  lease_seconds
-- ARGV[2]  max_connections
-- ARGV[2*i+1], ARGV[2*i+2]  conn_id and ConnectionInfo JSON of the i-th open connection (i >= 1)
--
-- Returns {renewed, revived, refused conn_id...}. The caller renews only connections that are
-- open on its worker. Live slots are extended first. A conn_id whose slot is gone (its lease ran
-- out during an outage longer than the lease, or Redis lost its data) takes it again, with its
-- info, only while the user holds fewer than max_connections live slots: other workers may have
-- admitted new connections in its place meanwhile, and the limit wins. The refused ones are
-- returned for the caller to close. A conn_id marked released (release.lua) is skipped: the
-- connection closed after this renewal was sent, and its release got here first. A live slot
-- keeps its stored info (a re-admission may have replaced it) and gets the given one only if it
-- has none (evicted, or admitted without).
-- Expired slots of other connections (and their info) are purged first. All keys share the hash
-- tag {u:<sub>}; slots and info expire one second after the last lease.

local lease_ms = tonumber(ARGV[1]) * 1000
local max_connections = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = now + lease_ms

local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for i = 1, #expired do
  redis.call('ZREM', KEYS[1], expired[i])
  redis.call('HDEL', KEYS[2], expired[i])
end
local renewed, revived = 0, 0
local gone = {}
for i = 3, #ARGV - 1, 2 do
  local conn_id, info = ARGV[i], ARGV[i + 1]
  if redis.call('ZSCORE', KEYS[1], conn_id) then
    renewed = renewed + 1
    redis.call('HSETNX', KEYS[2], conn_id, info)
    redis.call('ZADD', KEYS[1], expiry, conn_id)
  else
    gone[#gone + 1] = i
  end
end
local result = {0, 0}
for _, i in ipairs(gone) do
  local conn_id, info = ARGV[i], ARGV[i + 1]
  local mark = redis.call('ZSCORE', KEYS[3], conn_id)
  if mark and tonumber(mark) > now then
    -- Released: closed, nothing to revive nor to refuse.
  elseif redis.call('ZCARD', KEYS[1]) < max_connections then
    revived = revived + 1
    redis.call('HSET', KEYS[2], conn_id, info)
    redis.call('ZADD', KEYS[1], expiry, conn_id)
  else
    result[#result + 1] = conn_id
  end
end
result[1], result[2] = renewed, revived
if redis.call('ZCARD', KEYS[1]) > 0 then
  local last = tonumber(redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2])
  redis.call('PEXPIREAT', KEYS[1], last + 1000)
  redis.call('PEXPIREAT', KEYS[2], last + 1000)
else
  redis.call('DEL', KEYS[2])
end
return result
