-- renew_agents.lua: extend the presence leases of this worker's open connections of one tenant's
-- agents; re-establish the entries that are gone.
--
-- KEYS[1]    {prefix}:{t:<tenant>}:agents     zset; member = agent_id, score = the latest lease
--            expiry (ms, Redis TIME) of the agent's connections
-- KEYS[2]    {prefix}:{t:<tenant>}:released   zset; member = conn_id, score = end of the mark (ms)
-- KEYS[i+2]  {prefix}:{t:<tenant>}:a:<agent>  hash of the i-th entry's agent; field = conn_id,
--            value = "<lease expiry ms>:<connected at, us>:<worker_id>"
-- ARGV[1]    lease_seconds
-- ARGV[2]    worker_id of the calling worker (the one serving every entry)
-- ARGV[2*i+1]  agent_id of the i-th entry
-- ARGV[2*i+2]  conn_id of the i-th entry
--
-- Returns {renewed, revived}: leases extended, and entries re-established. The caller renews only
-- connections that are open on its worker, so an entry whose lease ran out (an outage longer than
-- the lease) or that is gone (Redis lost its data) is written again, unless conn_id is marked
-- released (agent_offline.lua: the connection closed after this renewal was sent, and its
-- offline got here first). Its "connected at" (which decides the most recent connection, the
-- one locate_agent returns):
--   - kept when the expired entry is still there (its true place in the order);
--   - else, when the agent has other live connections, one microsecond below the oldest of them:
--     a revived entry of unknown age never takes "most recent" from a connection that may be
--     newer (it becomes the most recent again only once it is the agent's last connection);
--   - else (the only connection) Redis TIME now.
-- The agent's score is raised to the new lease. Expired entries met on the way are purged. All
-- keys share the hash tag {t:<tenant>}; they expire one second after the last lease.

local lease_ms = tonumber(ARGV[1]) * 1000
local worker = ARGV[2]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local expiry = now + lease_ms

local renewed, revived = 0, 0
for i = 1, #KEYS - 2 do
  local key, agent_id, conn_id = KEYS[i + 2], ARGV[2 * i + 1], ARGV[2 * i + 2]
  local value = redis.call('HGET', key, conn_id)
  local old, rest = nil, nil
  if value then
    old, rest = string.match(value, '^(%d+):(.*)$')
  end
  local live = old and tonumber(old) > now
  local released = false
  if not live then
    local mark = redis.call('ZSCORE', KEYS[2], conn_id)
    released = mark and tonumber(mark) > now
  end
  if live then
    redis.call('HSET', key, conn_id, string.format('%.0f:%s', expiry, rest))
    renewed = renewed + 1
  elseif not released then
    -- Gone or expired, and not released: re-establish it (rare: the only place the whole hash
    -- is read).
    local known = value and tonumber(string.match(value, '^%d+:(%d+):'))
    local oldest = nil
    local entries = redis.call('HGETALL', key)
    for j = 1, #entries, 2 do
      if entries[j] ~= conn_id then
        local e, c = string.match(entries[j + 1], '^(%d+):(%d+):')
        e, c = tonumber(e), tonumber(c)
        if not e or e <= now then
          redis.call('HDEL', key, entries[j])
        elseif not oldest or c < oldest then
          oldest = c
        end
      end
    end
    local connected = known or (oldest and oldest - 1) or now_us
    redis.call('HSET', key, conn_id, string.format('%.0f:%.0f:%s', expiry, connected, worker))
    revived = revived + 1
  end
  if not released then
    local score = tonumber(redis.call('ZSCORE', KEYS[1], agent_id) or 0)
    if expiry > score then
      score = expiry
      redis.call('ZADD', KEYS[1], score, agent_id)
    end
    redis.call('PEXPIREAT', key, score + 1000)
  end
end
if redis.call('ZCARD', KEYS[1]) > 0 then
  local last = tonumber(redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2])
  redis.call('PEXPIREAT', KEYS[1], last + 1000)
end
return {renewed, revived}
