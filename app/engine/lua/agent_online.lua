-- agent_online.lua: record that a connection serves an agent (leased), atomically.
--
-- KEYS[1]  {prefix}:{t:<tenant>}:agents     zset; member = agent_id, score = the latest lease
--          expiry (ms, Redis TIME) of the agent's connections
-- KEYS[2]  {prefix}:{t:<tenant>}:a:<agent>  hash; field = conn_id,
--          value = "<lease expiry ms>:<connected at, us>:<worker_id>"
-- KEYS[3]  {prefix}:{t:<tenant>}:released   zset of conn_ids gone offline lately (agent_offline.lua)
-- ARGV[1]  agent_id
-- ARGV[2]  conn_id
-- ARGV[3]  worker_id of the connection
-- ARGV[4]  lease_seconds
--
-- Returns 1 when the agent had no live connection before this call (it just came online), else 0.
-- "connected at" orders the agent's connections (the newest one receives its commands): it is
-- Redis TIME in microseconds, forced above every other live connection of the agent so that it
-- strictly increases; a conn_id that is already live keeps its own. Expired connections are
-- purged; conn_id is no longer marked released. All keys share the hash tag {t:<tenant>}; the
-- agents and the agent's hash expire one second after the last lease.

local agent_id, conn_id = ARGV[1], ARGV[2]
local lease_ms = tonumber(ARGV[4]) * 1000
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])

local live, latest, newest, own = 0, 0, 0, nil
local entries = redis.call('HGETALL', KEYS[2])
for i = 1, #entries, 2 do
  local expiry, connected = string.match(entries[i + 1], '^(%d+):(%d+):')
  expiry, connected = tonumber(expiry), tonumber(connected)
  if not expiry or expiry <= now then
    redis.call('HDEL', KEYS[2], entries[i])
  else
    live = live + 1
    if connected > newest then newest = connected end
    if entries[i] == conn_id then
      own = connected
    elseif expiry > latest then
      latest = expiry
    end
  end
end

local expiry = now + lease_ms
local connected = own or math.max(now_us, newest + 1)
redis.call('HSET', KEYS[2], conn_id, string.format('%.0f:%.0f:%s', expiry, connected, ARGV[3]))
redis.call('ZREM', KEYS[3], conn_id)
latest = math.max(latest, expiry)
redis.call('PEXPIREAT', KEYS[2], latest + 1000)
redis.call('ZADD', KEYS[1], latest, agent_id)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local last = tonumber(redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2])
redis.call('PEXPIREAT', KEYS[1], last + 1000)
if live == 0 then
  return 1
end
return 0
