-- release.lua: give one connection slot and its info back.
--
-- KEYS[1]  {prefix}:{u:<sub>}:slots  zset; member = conn_id, score = lease expiry (ms, Redis TIME)
-- KEYS[2]  {prefix}:{u:<sub>}:info   hash; field = conn_id, value = ConnectionInfo as JSON
-- ARGV[1]  conn_id
--
-- Returns 1 when conn_id held a slot, else 0 (releasing twice is harmless). Both keys share the
-- hash tag {u:<sub>}.

redis.call('HDEL', KEYS[2], ARGV[1])
return redis.call('ZREM', KEYS[1], ARGV[1])
