-- list_connections.lua: the stored info of one user's live slots.
--
-- KEYS[1]  {prefix}:{u:<sub>}:slots  zset; member = conn_id, score = lease expiry (ms, Redis TIME)
-- KEYS[2]  {prefix}:{u:<sub>}:info   hash; field = conn_id, value = ConnectionInfo as JSON
-- (no ARGV)
--
-- Returns the info JSON of every live slot that has one. Expired slots and their info are purged
-- first; info whose slot is gone (a stray field) is dropped too.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for i = 1, #expired do
  redis.call('ZREM', KEYS[1], expired[i])
  redis.call('HDEL', KEYS[2], expired[i])
end
local out = {}
local infos = redis.call('HGETALL', KEYS[2])
for i = 1, #infos, 2 do
  if redis.call('ZSCORE', KEYS[1], infos[i]) then
    out[#out + 1] = infos[i + 1]
  else
    redis.call('HDEL', KEYS[2], infos[i])
  end
end
return out
