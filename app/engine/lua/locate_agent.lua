-- locate_agent.lua: the agent's most recently connected live connection.
--
-- KEYS[1]  {prefix}:{t:<tenant>}:a:<agent>  hash; field = conn_id,
--          value = "<lease expiry ms>:<connected at, us>:<worker_id>"
-- (no ARGV)
--
-- Returns {worker_id, conn_id} of the live connection with the latest "connected at", or nil
-- (false) when the agent has none. Read-only: expired entries are skipped, not purged.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local best, best_at, best_worker = nil, -1, nil
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  local expiry, connected, worker = string.match(entries[i + 1], '^(%d+):(%d+):(.*)$')
  expiry, connected = tonumber(expiry), tonumber(connected)
  if expiry and expiry > now and connected > best_at then
    best, best_at, best_worker = entries[i], connected, worker
  end
end
if best then
  return {best_worker, best}
end
return false
