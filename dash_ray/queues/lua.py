"""Lua scripts for dash-ray's own keys (BullMQ's scripts stay BullMQ's)."""

from __future__ import annotations

__all__ = ["POSITION", "RESERVE", "publish_script"]

# Publish one job event atomically: next seq, latest state, capped stream, pub/sub.
# The bus's constants are baked into the text (see publish_script), so a call packs few arguments.
# KEYS: 1 job hash, 2 events stream, 3 finished zset, 4 open-jobs set of the user (or a dummy),
#       5 cancel flag, 6 the queue's duration histogram, 7 the user's history zset, 8 its counter
# ARGV: 1 channel, 2 event JSON without its closing brace, 3 mode ('0' plain, '1' terminal,
#       '2' restart: the job is live again, '3' a new job: also index it in the user's history), 4 job id, 5 now ms, 6 wait list key for a
#       queuePosition ('' for none), 7 prioritized key, 8 guard: a BullMQ job hash ('' for none),
#       9 the finishedOn it must hold (publish only if that completion was ours),
#       10 state fields for the job hash: key, value, key, value... joined by \x1f,
#       11 (terminal events) a duration histogram field to count ('' for none), 12 its seconds,
#       13 (mode '3': a brand-new job, its fields in ARGV[10]) the most history entries per user.
# Returns {seq, queue position or -1, 1 if a cancel was requested for a live job else 0};
# {0, -1, 0} when the guard says the completion was not ours.
_PUBLISH = r"""
local MAXLEN, TTL, KEEP, NS = %(maxlen)d, %(ttl)d, %(keep)d, "%(ns)s"
if ARGV[8] ~= '' and redis.call('HGET', ARGV[8], 'finishedOn') ~= ARGV[9] then
  return {0, -1, 0}
end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local body = ARGV[2]
local pos = -1
if ARGV[6] ~= '' then
  local rank = redis.call('ZRANK', ARGV[7], ARGV[4])
  local waitLen = redis.call('LLEN', ARGV[6])
  if rank then
    pos = waitLen + rank + 1
  else
    local idx = redis.call('LPOS', ARGV[6], ARGV[4], 'MAXLEN', 100000)
    if idx then pos = waitLen - idx end
  end
  if pos > 0 then
    body = body .. ',"queuePosition":' .. pos
  end
end
local msg = body .. ',"seq":' .. seq .. '}'
local fields, s, from = {}, ARGV[10], 1
while s ~= '' do
  local i = string.find(s, '\31', from, true)
  if not i then
    fields[#fields + 1] = string.sub(s, from)
    break
  end
  fields[#fields + 1] = string.sub(s, from, i - 1)
  from = i + 1
end
if #fields >= 2 then
  redis.call('HSET', KEYS[1], unpack(fields))
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', MAXLEN, seq .. '-0', 'm', msg)
redis.call('PUBLISH', ARGV[1], msg)
local cancelled = 0
if ARGV[3] == '1' then
  if ARGV[11] ~= '' then
    redis.call('HINCRBY', KEYS[6], ARGV[11], 1)
    redis.call('HINCRBYFLOAT', KEYS[6], 'sum', ARGV[12])
  end
  redis.call('EXPIRE', KEYS[1], TTL)
  redis.call('EXPIRE', KEYS[2], TTL)
  redis.call('SREM', KEYS[4], ARGV[4])
  redis.call('DEL', KEYS[5])
  redis.call('ZADD', KEYS[3], ARGV[5], ARGV[4])
  local excess = redis.call('ZCARD', KEYS[3]) - KEEP
  if excess > 0 then
    local old = redis.call('ZRANGE', KEYS[3], 0, excess - 1)
    for _, id in ipairs(old) do
      redis.call('DEL', NS .. 'job:' .. id, NS .. 'ev:' .. id)
    end
    redis.call('ZREMRANGEBYRANK', KEYS[3], 0, excess - 1)
  end
else
  cancelled = redis.call('EXISTS', KEYS[5])
  if ARGV[3] == '3' then
    local n = redis.call('INCR', KEYS[8])
    redis.call('ZADD', KEYS[7], n, ARGV[4])
    local over = redis.call('ZCARD', KEYS[7]) - tonumber(ARGV[13])
    if over > 0 then
      redis.call('ZREMRANGEBYRANK', KEYS[7], 0, over - 1)
    end
  end
  if ARGV[3] == '2' or ARGV[3] == '3' then
    redis.call('PERSIST', KEYS[1])
    redis.call('PERSIST', KEYS[2])
    redis.call('ZREM', KEYS[3], ARGV[4])
    redis.call('SADD', KEYS[4], ARGV[4])
  end
end
return {seq, pos, cancelled}
"""


def publish_script(maxlen: int, ttl_s: int, keep: int, ns: str) -> str:
    """The PUBLISH script for one bus's constants (stream length, TTL, retention, key namespace)."""
    if not all(c.isalnum() or c in "_.-:" for c in ns):
        raise ValueError(f"bad key namespace {ns!r}")
    return _PUBLISH % {"maxlen": maxlen, "ttl": ttl_s, "keep": keep, "ns": ns}


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
