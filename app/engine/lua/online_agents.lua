-- online_agents.lua: the agents of one tenant with at least one live connection.
--
-- KEYS[1]  {prefix}:{t:<tenant>}:agents  zset; member = agent_id, score = the latest lease
--          expiry (ms, Redis TIME) of the agent's connections
-- ARGV     (optional) agent ids: only these are looked up, one ZSCORE each (a dashboard that
--          names its agents must not pay for every agent of the tenant; ZSCORE, not ZMSCORE,
--          keeps Redis 5 working)
--
-- Returns the agent ids (all of them, or those of ARGV) whose latest lease has not run out.
-- Read-only.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if #ARGV == 0 then
  return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. string.format('%.0f', now), '+inf')
end
local online = {}
for i = 1, #ARGV do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) > now then
    online[#online + 1] = ARGV[i]
  end
end
return online
