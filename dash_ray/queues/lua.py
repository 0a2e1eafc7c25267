"""The Lua scripts of the job lifecycle (dash-ray's own keys; BullMQ's scripts stay BullMQ's).

Each script names its keys and arguments once, in a `Script`: the script reads them as
`K.<name>` / `A.<name>` (written as KEYS[i] / ARGV[i] when the text is made) and callers pass
them by name (`Script.pack`). Constants of a deployment (stream length, retention, key namespace) are
baked into the text by `Script.text`, so a call sends few arguments.

The event frame: Python sends the event's JSON without its closing brace (`A.frame`); `emit`
appends `,"queuePosition":N` (when asked and the job is waiting) and `,"seq":N}`. The frame is
stored in the job's replay stream and published on its channel, and the job hash takes the
state fields in `A.fields` (key, value, ... joined by \\x1f).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["CHECKPOINT", "CREATE", "EVENT", "EXTEND_LOCKS", "FINISH", "POSITION", "Script", "with_bull_add"]


@dataclass(frozen=True)
class Script:
    """A Lua script with named KEYS and ARGV."""

    name: str
    keys: tuple[str, ...]
    args: tuple[str, ...]
    body: str

    def text(self, *, after: tuple[int, int] = (0, 0), prelude: str = "", **constants: Any) -> str:
        """The script's source: the shared functions and the body, with every `K.<name>` /
        `A.<name>` written as its `KEYS[i]` / `ARGV[i]` (no lookup table at run time; a name the
        script does not declare becomes nil) and the constants baked in.

        `after` = (keys, args) that come before this script's own (another script's, run by
        `prelude`, which is inserted verbatim before the body)."""
        nk, na = after
        index = {("K", n): f"KEYS[{i}]" for i, n in enumerate(self.keys, nk + 1)}
        index.update({("A", n): f"ARGV[{i}]" for i, n in enumerate(self.args, na + 1)})
        consts = "\n".join(f"local {n.upper()} = {_lua(v)}" for n, v in sorted(constants.items()))
        source = _NAME.sub(lambda m: index.get((m.group(1), m.group(2)), "nil"), f"{consts}\n{_EMIT}\n")
        body = _NAME.sub(lambda m: index.get((m.group(1), m.group(2)), "nil"), self.body)
        return f"{source}{prelude}\n{body}"

    def pack(self, keys: Mapping[str, str], args: Mapping[str, Any]) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV in the script's order from name -> value maps (every name required)."""
        return [keys[n] for n in self.keys], [args[n] for n in self.args]


_NAME = re.compile(r"\b([KA])\.(\w+)")


def _lua(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value)
    if not all(c.isalnum() or c in "_.-:" for c in text):
        raise ValueError(f"unsafe Lua constant {text!r}")
    return f'"{text}"'


# Shared by every script: the next seq, the frame completed, the state written, the event
# stored and published. Expects K.job, K.events, A.channel, A.frame, A.fields, A.job_id, and
# (with `position`) K.wait and K.prioritized. Returns seq and the queue position (or -1).
#
# A seq never repeats, even when Redis restarts from an append-only file that lost its last
# second of writes (events clients may have seen): the job hash keeps the server's LASTSAVE
# (its start time, or its last RDB save) of its last event, and when that changed, the next seq
# jumps by SEQ_GAP, more than any job publishes in the writes a restart can lose.
_EMIT = r"""
local SEQ_GAP = 1000
local function emit(position, known, last)
  local boot = redis.call('LASTSAVE')
  if not known then last = redis.call('HGET', K.job, 'boot') end
  local step = 1
  if last and tonumber(last) ~= boot then step = SEQ_GAP end
  local seq = redis.call('HINCRBY', K.job, 'seq', step)
  if tonumber(last) ~= boot then redis.call('HSET', K.job, 'boot', boot) end
  local body = A.frame
  local pos = -1
  if position then
    local rank = redis.call('ZRANK', K.prioritized, A.job_id)
    local waitLen = redis.call('LLEN', K.wait)
    if rank then
      pos = waitLen + rank + 1
    else
      local idx = redis.call('LPOS', K.wait, A.job_id, 'MAXLEN', 100000)
      if idx then pos = waitLen - idx end
    end
    if pos > 0 then body = body .. ',"queuePosition":' .. pos end
  end
  local msg = body .. ',"seq":' .. seq .. '}'
  local fields, s, from = {}, A.fields, 1
  while s ~= '' do
    local i = string.find(s, '\31', from, true)
    if not i then
      fields[#fields + 1] = string.sub(s, from)
      break
    end
    fields[#fields + 1] = string.sub(s, from, i - 1)
    from = i + 1
  end
  if #fields >= 2 then redis.call('HSET', K.job, unpack(fields)) end
  redis.call('XADD', K.events, 'MAXLEN', '~', MAXLEN, seq .. '-0', 'm', msg)
  redis.call('PUBLISH', A.channel, msg)
  return seq, pos
end

local function live_again()
  redis.call('PERSIST', K.job)
  redis.call('PERSIST', K.events)
  redis.call('ZREM', K.finished, A.job_id)
  redis.call('SADD', K.open, A.job_id)
end
"""

# create: a new job, whole, in one script: BullMQ's add (its own script, run as the function
# `bull_add` over the KEYS and ARGV that come first; see `with_bull_add`), then the job's
# record, its user's history entry and open set, and its `waiting` / `delayed` event. No
# half-created job can exist: a failure anywhere before the script runs creates nothing.
# Returns {seq, position} or, when a job with this id already has a record,
# {0, -1, queue, digest, status, owner} and changes nothing; {0, -1, '', '', '', ''} when BullMQ
# holds the id without a record (added by another producer, or its record expired first): no
# record is ever made for a BullMQ job that someone else created.
CREATE = Script(
    "create",
    keys=("job", "events", "finished", "open", "history", "history_n", "wait", "prioritized", "bull_job", "recent",
          "recent_n"),
    args=("channel", "frame", "fields", "job_id", "digest", "position"),
    body=r"""
local cur = redis.call('HMGET', K.job, 'queue', 'digest', 'status', 'userId')
if cur[2] then return {0, -1, cur[1] or '', cur[2], cur[3] or '', cur[4] or ''} end
if redis.call('EXISTS', K.bull_job) == 1 then return {0, -1, '', '', '', ''} end
local added = bull_add()
if type(added) == 'number' and added < 0 then
  return redis.error_reply('BullMQ refused job ' .. A.job_id .. ': code ' .. added)
end
redis.call('HSET', K.job, 'digest', A.digest)
local n = redis.call('INCR', K.history_n)
redis.call('ZADD', K.history, n, A.job_id)
local over = redis.call('ZCARD', K.history) - HISTORY_MAX
if over > 0 then redis.call('ZREMRANGEBYRANK', K.history, 0, over - 1) end
redis.call('ZADD', K.recent, redis.call('INCR', K.recent_n), A.job_id)
over = redis.call('ZCARD', K.recent) - RECENT_MAX
if over > 0 then redis.call('ZREMRANGEBYRANK', K.recent, 0, over - 1) end
live_again()
local seq, pos = emit(A.position == '1')
return {seq, pos}
""")


def with_bull_add(bull_source: str, bull_keys: int, bull_args: int) -> str:
    """The prelude of CREATE that runs one of BullMQ's add scripts (its text unchanged, as the
    body of a function whose KEYS and ARGV are the first `bull_keys` / `bull_args` of ours)."""
    return (f"local function bull_add_script(KEYS, ARGV)\n{bull_source}\nend\n"
            f"local function bull_add()\n"
            f"  return bull_add_script({{unpack(KEYS, 1, {bull_keys})}}, {{unpack(ARGV, 1, {bull_args})}})\nend\n")


# event: a non-final event of a live job: an attempt started, its progress, or the job is
# waiting again (`live` = '1': retried, recovered, requeued). Returns {seq, position,
# 1 if a cancel was requested for the job else 0}.
# Fenced: an attempt's event (`token` = its BullMQ lock token) is refused once another attempt
# holds the job's lock, and any event but `live` once the job is final; a refused event returns
# {0, -1, 1}, which tells a stale attempt to stop as if cancelled.
EVENT = Script(
    "event",
    keys=("job", "events", "finished", "open", "cancel", "wait", "prioritized", "lock"),
    args=("channel", "frame", "fields", "job_id", "live", "position", "token"),
    body=r"""
local cur = redis.call('HMGET', K.job, 'status', 'boot')
if A.live == '1' then
  live_again()
else
  local st = cur[1]
  if st == 'completed' or st == 'failed' or st == 'cancelled' then return {0, -1, 1} end
  if A.token ~= '' then
    local owner = redis.call('GET', K.lock)
    if owner and owner ~= A.token then return {0, -1, 1} end
  end
end
local seq, pos = emit(A.position == '1', true, cur[2])
return {seq, pos, redis.call('EXISTS', K.cancel)}
""")

# finish: the final event (completed, failed, cancelled). With `finished_on`, only if BullMQ's
# job holds that finishedOn (the completion in the same round trip was ours). Counts the run
# time in the queue's histogram (`bucket` '' for none), starts the record's expiry and trims
# the queue's finished jobs to the retention. Returns {seq}, or {0} when the guard refused.
FINISH = Script(
    "finish",
    keys=("job", "events", "finished", "open", "cancel", "durations", "bull_job"),
    args=("channel", "frame", "fields", "job_id", "now_ms", "finished_on", "bucket", "seconds"),
    body=r"""
if A.finished_on ~= '' and redis.call('HGET', K.bull_job, 'finishedOn') ~= A.finished_on then
  return {0}
end
local st = redis.call('HGET', K.job, 'status')
if st == 'completed' or st == 'failed' or st == 'cancelled' then return {0} end
local seq = emit(false)
if A.bucket ~= '' then
  redis.call('HINCRBY', K.durations, A.bucket, 1)
  redis.call('HINCRBYFLOAT', K.durations, 'sum', A.seconds)
end
redis.call('EXPIRE', K.job, TTL)
redis.call('EXPIRE', K.events, TTL)
redis.call('SREM', K.open, A.job_id)
redis.call('DEL', K.cancel)
redis.call('ZADD', K.finished, A.now_ms, A.job_id)
local excess = redis.call('ZCARD', K.finished) - KEEP
if excess > 0 then
  local old = redis.call('ZRANGE', K.finished, 0, excess - 1)
  for _, id in ipairs(old) do
    redis.call('DEL', NS .. 'job:' .. id, NS .. 'ev:' .. id)
  end
  redis.call('ZREMRANGEBYRANK', K.finished, 0, excess - 1)
end
return {seq}
""")

# checkpoint: make `path` (an artifact this attempt wrote) the job's checkpoint, only while the
# attempt (`token`, its BullMQ lock token) holds the job and the job is not final: a stale
# attempt's checkpoint never replaces the running attempt's. Returns {1, the path it replaced
# or ''} or {0, ''} when refused.
CHECKPOINT = Script(
    "checkpoint",
    keys=("job", "lock"),
    args=("token", "path"),
    body=r"""
local st = redis.call('HGET', K.job, 'status')
if st == 'completed' or st == 'failed' or st == 'cancelled' then return {0, ''} end
if A.token ~= '' then
  local owner = redis.call('GET', K.lock)
  if owner and owner ~= A.token then return {0, ''} end
end
local prev = redis.call('HGET', K.job, 'checkpoint') or ''
redis.call('HSET', K.job, 'checkpoint', A.path)
return {1, prev}
""")

# A read, not a transition: the queue position of a waiting job (1 = next), or -1.
# KEYS: 1 wait list, 2 prioritized zset; ARGV: 1 job id
POSITION = r"""
local rank = redis.call('ZRANK', KEYS[2], ARGV[1])
local waitLen = redis.call('LLEN', KEYS[1])
if rank then return waitLen + rank + 1 end
local idx = redis.call('LPOS', KEYS[1], ARGV[1], 'MAXLEN', 100000)
if idx then return waitLen - idx end
return -1
"""

# BullMQ's extendLocks, plus: a lock that expired while its consumer could not reach Redis (an
# outage longer than the lock) is taken back if the job is still active and not yet handed
# to anyone else. BullMQ's stalled check moves a job only on its second pass, so a consumer
# that renews within one stalled interval of Redis coming back keeps its running jobs.
# KEYS: 1 stalled set, 2 active list; ARGV: 1 job key base (`{prefix}:{queue}:`), 2 lock ms,
# then job id, token, job id, token... Returns the ids whose lock is someone else's now.
EXTEND_LOCKS = r"""
local failed = {}
for i = 3, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local lockKey = ARGV[1] .. id .. ':lock'
  local cur = redis.call('GET', lockKey)
  if cur == token or (not cur and redis.call('LPOS', KEYS[2], id)) then
    redis.call('SET', lockKey, token, 'PX', ARGV[2])
    redis.call('SREM', KEYS[1], id)
  else
    failed[#failed + 1] = id
  end
end
return failed
"""
