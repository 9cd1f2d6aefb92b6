-- release.lua: give one connection slot and its info back, and mark its conn_id released.
--
-- KEYS[1]  {prefix}:{u:<sub>}:slots     zset; member = conn_id, score = lease expiry (ms, Redis TIME)
-- KEYS[2]  {prefix}:{u:<sub>}:info      hash; field = conn_id, value = ConnectionInfo as JSON
-- KEYS[3]  {prefix}:{u:<sub>}:released  zset; member = conn_id, score = end of the mark (ms)
-- ARGV[1]  conn_id
-- ARGV[2]  released_seconds: how long the mark lasts
--
-- Returns 1 when conn_id held a slot, else 0 (releasing twice is harmless). The mark keeps a
-- renewal that was sent before the release, but reaches Redis after it (another connection, a
-- retried pipeline), from taking the slot again (renew.lua); admit_user.lua clears it. All keys
-- share the hash tag {u:<sub>}.

local mark_ms = tonumber(ARGV[2]) * 1000
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
redis.call('ZADD', KEYS[3], now + mark_ms, ARGV[1])
-- Every mark lasts as long: the newest one is the last to go.
redis.call('PEXPIRE', KEYS[3], mark_ms)
redis.call('HDEL', KEYS[2], ARGV[1])
return redis.call('ZREM', KEYS[1], ARGV[1])
