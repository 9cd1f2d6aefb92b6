-- online_agents.lua: the agents of one tenant with at least one live connection.
--
-- KEYS[1]  {prefix}:{t:<tenant>}:agents  zset; member = agent_id, score = the latest lease
--          expiry (ms, Redis TIME) of the agent's connections
-- (no ARGV)
--
-- Returns the agent ids whose latest lease has not run out. Read-only.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. string.format('%.0f', now), '+inf')
