-- send_to_agent.lua: publish one message to the worker of the agent's most recently connected
-- live connection whose worker is listening, in one round trip (locate_agent.lua's choice, then
-- PUBLISH).
--
-- KEYS[1]  {prefix}:{t:<tenant>}:a:<agent>  hash; field = conn_id,
--          value = "<lease expiry ms>:<connected at, us>:<worker_id>"
-- ARGV[1]  the worker channels' prefix ("{prefix}:w:"); the worker id completes it
-- ARGV[2]  the message's head, ARGV[3] its tail: the message is head .. JSON(conn_id) .. tail
--
-- Returns 1 when a worker received the message, 0 when none did: the agent has no live
-- connection, or every worker its live entries name has no subscriber (killed, or drained while
-- Redis could not take its entries back, until their leases run out). A message PUBLISHed to
-- nobody is lost: the caller answers agent_offline instead of accepting a command no one gets.
-- Entries are tried newest first and left in place (a worker re-subscribing after a failover
-- keeps its agents). Not for a Redis Cluster: the channel is not in KEYS[1]'s slot.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live = {}
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  local expiry, connected, worker = string.match(entries[i + 1], '^(%d+):(%d+):(.*)$')
  expiry, connected = tonumber(expiry), tonumber(connected)
  if expiry and expiry > now then
    live[#live + 1] = {entries[i], connected, worker}
  end
end
table.sort(live, function(a, b) return a[2] > b[2] end)
for _, entry in ipairs(live) do
  local message = ARGV[2] .. cjson.encode(entry[1]) .. ARGV[3]
  if redis.call('PUBLISH', ARGV[1] .. entry[3], message) > 0 then
    return 1
  end
end
return 0
