-- send_to_agent.lua: locate the agent's most recently connected live connection and publish one
-- message to its worker, in one round trip (locate_agent.lua's choice, then PUBLISH).
--
-- KEYS[1]  {prefix}:{t:<tenant>}:a:<agent>  hash; field = conn_id,
--          value = "<lease expiry ms>:<connected at, us>:<worker_id>"
-- ARGV[1]  the worker channels' prefix ("{prefix}:w:"); the worker id completes it
-- ARGV[2]  the message's head, ARGV[3] its tail: the message is head .. JSON(conn_id) .. tail
--
-- Returns 1 when the message was published, 0 (nothing published) when the agent has no live
-- connection. Not for a Redis Cluster: the channel is not in KEYS[1]'s slot.

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
if not best then
  return 0
end
redis.call('PUBLISH', ARGV[1] .. best_worker, ARGV[2] .. cjson.encode(best) .. ARGV[3])
return 1
