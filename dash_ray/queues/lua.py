"""Lua scripts for dash-ray's own keys (BullMQ's scripts stay BullMQ's)."""

from __future__ import annotations

__all__ = ["POSITION", "PUBLISH", "RESERVE"]

# Publish one job event atomically: next seq, latest state, capped stream, pub/sub.
# Returns {seq, queue position or -1}; {0, -1} when the guard says the completion was not ours.
# KEYS: 1 job hash, 2 events stream, 3 finished zset, 4 open-jobs set of the user (or a dummy),
#       5 cancel flag
# ARGV: 1 channel, 2 event JSON without its closing brace, 3 mode ('0' plain, '1' terminal,
#       '2' restart: the job is live again), 4 stream maxlen, 5 ttl seconds, 6 finished keep,
#       7 job id, 8 namespace prefix, 9 now ms, 10 position mode ('' none, else wait key),
#       11 prioritized key, 12 guard: a BullMQ job hash ('' for none), 13 the finishedOn it must
#       hold (publish only if that completion was ours), then field/value pairs for the state hash.
PUBLISH = r"""
if ARGV[12] ~= '' and redis.call('HGET', ARGV[12], 'finishedOn') ~= ARGV[13] then
  return {0, -1}
end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local body = ARGV[2]
local pos = -1
if ARGV[10] ~= '' then
  local rank = redis.call('ZRANK', ARGV[11], ARGV[7])
  local waitLen = redis.call('LLEN', ARGV[10])
  if rank then
    pos = waitLen + rank + 1
  else
    local idx = redis.call('LPOS', ARGV[10], ARGV[7], 'MAXLEN', 100000)
    if idx then pos = waitLen - idx end
  end
  if pos > 0 then
    body = body .. ',"queuePosition":' .. pos
  end
end
local msg = body .. ',"seq":' .. seq .. '}'
if #ARGV >= 14 then
  redis.call('HSET', KEYS[1], unpack(ARGV, 14, #ARGV))
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], seq .. '-0', 'm', msg)
redis.call('PUBLISH', ARGV[1], msg)
if ARGV[3] == '1' then
  local ttl = tonumber(ARGV[5])
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('EXPIRE', KEYS[2], ttl)
  redis.call('SREM', KEYS[4], ARGV[7])
  redis.call('DEL', KEYS[5])
  redis.call('ZADD', KEYS[3], ARGV[9], ARGV[7])
  local excess = redis.call('ZCARD', KEYS[3]) - tonumber(ARGV[6])
  if excess > 0 then
    local old = redis.call('ZRANGE', KEYS[3], 0, excess - 1)
    for _, id in ipairs(old) do
      redis.call('DEL', ARGV[8] .. 'job:' .. id, ARGV[8] .. 'ev:' .. id)
    end
    redis.call('ZREMRANGEBYRANK', KEYS[3], 0, excess - 1)
  end
elseif ARGV[3] == '2' then
  redis.call('PERSIST', KEYS[1])
  redis.call('PERSIST', KEYS[2])
  redis.call('ZREM', KEYS[3], ARGV[7])
  redis.call('SADD', KEYS[4], ARGV[7])
end
return {seq, pos}
"""

# Reserve a job id: create our job hash unless it exists.
# KEYS: 1 job hash, 2 user jobs zset, 3 user counter, 4 user open-jobs set
# ARGV: 1 queue, 2 digest, 3 user id, 4 created ms, 5 max history per user, 6 job id
# Returns false when created, else {queue, digest, status}.
RESERVE = r"""
local cur = redis.call('HMGET', KEYS[1], 'queue', 'digest', 'status')
if cur[1] then
  return {cur[1], cur[2] or '', cur[3] or ''}
end
redis.call('HSET', KEYS[1], 'queue', ARGV[1], 'digest', ARGV[2], 'userId', ARGV[3],
  'created', ARGV[4], 'status', 'waiting', 'progress', '0', 'message', '')
local n = redis.call('INCR', KEYS[3])
redis.call('ZADD', KEYS[2], n, ARGV[6])
redis.call('SADD', KEYS[4], ARGV[6])
local excess = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[5])
if excess > 0 then
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, excess - 1)
end
return false
"""

# Queue position of a waiting job (1 = next), or -1.
# KEYS: 1 wait list, 2 prioritized zset; ARGV: 1 job id
POSITION = r"""
local rank = redis.call('ZRANK', KEYS[2], ARGV[1])
local waitLen = redis.call('LLEN', KEYS[1])
if rank then return waitLen + rank + 1 end
local idx = redis.call('LPOS', KEYS[1], ARGV[1], 'MAXLEN', 100000)
if idx then return waitLen - idx end
return -1
"""
