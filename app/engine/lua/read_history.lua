-- read_history.lua: one agent's held events after a given seq. Read-only.
--
-- KEYS[1]  {prefix}:{h:<tenant>:<agent>}:meta  hash; e = epoch, s = last seq given out
-- KEYS[2]  {prefix}:{h:<tenant>:<agent>}:ev    stream; fields s = seq, p = payload JSON
-- ARGV[1]  the seq already seen (events after it are returned)
-- ARGV[2]  history seconds (older events are left out even when not yet trimmed)
--
-- Returns {epoch or "", last seq, seq1, payload1, seq2, payload2, ...}, oldest first.

local meta = redis.call('HMGET', KEYS[1], 'e', 's')
if not meta[1] then
  return {'', 0}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local after = tonumber(ARGV[1])
local edge = now - tonumber(ARGV[2]) * 1000
local reply = {meta[1], tonumber(meta[2] or 0)}
-- An id at the edge is as old as the history allows: left out, as MINID trimming would.
for _, entry in ipairs(redis.call('XRANGE', KEYS[2], string.format('(%.0f', edge), '+')) do
  local fields = entry[2]
  local seq = tonumber(fields[2])
  if seq > after then
    reply[#reply + 1] = seq
    reply[#reply + 1] = fields[4]
  end
end
return reply
