-- renew_agents.lua: extend the presence leases of live connections of one tenant's agents.
--
-- KEYS[1]    {prefix}:{t:<tenant>}:agents     zset; member = agent_id, score = the latest lease
--            expiry (ms, Redis TIME) of the agent's connections
-- KEYS[i+1]  {prefix}:{t:<tenant>}:a:<agent>  hash of the i-th entry's agent; field = conn_id,
--            value = "<lease expiry ms>:<connected at, us>:<worker_id>"
-- ARGV[1]    lease_seconds
-- ARGV[2*i]  agent_id of the i-th entry
-- ARGV[2*i+1]  conn_id of the i-th entry
--
-- Returns the number of leases extended. An expired connection is not revived (its agent may
-- already have been announced offline): it is deleted. All keys share the hash tag {t:<tenant>}.

local lease_ms = tonumber(ARGV[1]) * 1000
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = now + lease_ms

local renewed = 0
for i = 1, #KEYS - 1 do
  local key, agent_id, conn_id = KEYS[i + 1], ARGV[2 * i], ARGV[2 * i + 1]
  local value = redis.call('HGET', key, conn_id)
  if value then
    local old, rest = string.match(value, '^(%d+):(.*)$')
    if old and tonumber(old) > now then
      redis.call('HSET', key, conn_id, string.format('%.0f:%s', expiry, rest))
      local score = tonumber(redis.call('ZSCORE', KEYS[1], agent_id) or 0)
      if expiry > score then
        score = expiry
        redis.call('ZADD', KEYS[1], score, agent_id)
      end
      redis.call('PEXPIREAT', key, score + 1000)
      renewed = renewed + 1
    else
      redis.call('HDEL', key, conn_id)
    end
  end
end
if redis.call('ZCARD', KEYS[1]) > 0 then
  local last = tonumber(redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2])
  redis.call('PEXPIREAT', KEYS[1], last + 1000)
end
return renewed
