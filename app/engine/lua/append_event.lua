-- append_event.lua: number one agent's next event and keep it in the agent's history.
--
-- KEYS[1]  {prefix}:{h:<tenant>:<agent>}:meta  hash; e = epoch, s = last seq given out,
--          n / ns = the nonce of the last call and the seq it got
-- KEYS[2]  {prefix}:{h:<tenant>:<agent>}:ev    stream; fields s = seq, p = payload JSON
-- ARGV[1]  a fresh epoch, used only when the history is gone (never kept, expired, lost); random
--          per call, it is also the call's nonce
-- ARGV[2]  history size (events kept; 0: none, only the counter)
-- ARGV[3]  history seconds (older events are trimmed)
-- ARGV[4]  seconds the epoch and counter outlive the last event
-- ARGV[5]  the payload (JSON text)
-- ARGV[6], ARGV[7]  the epoch and seq the caller last got for this agent ("" and 0: none)
--
-- Returns {epoch, seq}. Atomic: seqs of one agent are 1, 2, 3... whichever worker appends.
-- A counter below a number the caller already got under the same epoch has lost writes (a
-- failover with asynchronous replication): a new epoch starts, so that no number is given twice
-- under one epoch (dashboards would drop the second event as a duplicate).
-- The same call run again right after (the client's retry of a reply lost with its connection)
-- gets the same answer and appends nothing.
-- Stream ids are Redis time (ms), so MINID trims by age on the same clock as TIME.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local size, seconds = tonumber(ARGV[2]), tonumber(ARGV[3])
local epoch = redis.call('HGET', KEYS[1], 'e')
if epoch and redis.call('HGET', KEYS[1], 'n') == ARGV[1] then
  return {epoch, tonumber(redis.call('HGET', KEYS[1], 'ns'))}
end
if epoch and epoch == ARGV[6] and tonumber(redis.call('HGET', KEYS[1], 's') or 0) < tonumber(ARGV[7]) then
  epoch = false
end
if not epoch then
  -- A new history: whatever the stream still holds belongs to the lost one.
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], 'e', epoch, 's', 0)
  redis.call('DEL', KEYS[2])
end
local seq = redis.call('HINCRBY', KEYS[1], 's', 1)
redis.call('HSET', KEYS[1], 'n', ARGV[1], 'ns', seq)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
if size > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', size, '*', 's', seq, 'p', ARGV[5])
  redis.call('XTRIM', KEYS[2], 'MINID', string.format('%.0f', now - seconds * 1000))
  redis.call('EXPIRE', KEYS[2], seconds)
else
  redis.call('DEL', KEYS[2])
end
return {epoch, seq}
