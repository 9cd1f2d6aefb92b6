-- agent_offline.lua: forget one connection of an agent, atomically.
--
-- KEYS[1]  {prefix}:{t:<tenant>}:agents     zset; member = agent_id, score = the latest lease
--          expiry (ms, Redis TIME) of the agent's connections
-- KEYS[2]  {prefix}:{t:<tenant>}:a:<agent>  hash; field = conn_id,
--          value = "<lease expiry ms>:<connected at, us>:<worker_id>"
-- KEYS[3]  {prefix}:{t:<tenant>}:released   zset; member = conn_id, score = end of the mark (ms)
-- ARGV[1]  agent_id
-- ARGV[2]  conn_id
-- ARGV[3]  released_seconds: how long conn_id stays marked released
--
-- Returns 1 when the agent has no live connection left (also when conn_id was already gone:
-- idempotent), else 0. Expired connections are purged; the agent's score is lowered to the
-- latest lease left. conn_id is marked released, so that a renewal sent before this call but
-- reaching Redis after it does not bring the entry back (renew_agents.lua); agent_online.lua
-- clears the mark. All keys share the hash tag {t:<tenant>}.

local agent_id = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local mark_ms = tonumber(ARGV[3]) * 1000
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
redis.call('ZADD', KEYS[3], now + mark_ms, ARGV[2])
-- Every mark lasts as long: the newest one is the last to go.
redis.call('PEXPIRE', KEYS[3], mark_ms)

redis.call('HDEL', KEYS[2], ARGV[2])
local latest = 0
local entries = redis.call('HGETALL', KEYS[2])
for i = 1, #entries, 2 do
  local expiry = tonumber(string.match(entries[i + 1], '^(%d+):'))
  if not expiry or expiry <= now then
    redis.call('HDEL', KEYS[2], entries[i])
  elseif expiry > latest then
    latest = expiry
  end
end

if latest == 0 then
  redis.call('DEL', KEYS[2])
  redis.call('ZREM', KEYS[1], agent_id)
  return 1
end
redis.call('ZADD', KEYS[1], latest, agent_id)
redis.call('PEXPIREAT', KEYS[2], latest + 1000)
return 0
