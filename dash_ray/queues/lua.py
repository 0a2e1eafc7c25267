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

__all__ = ["ADOPT", "ADOPT_SCAN", "CHECKPOINT", "CREATE", "EVENT", "EXTEND_LOCKS", "FAIR_PRUNE", "FINISH", "POSITION",
           "REOPEN", "USAGE", "Script", "with_bull_add"]


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
# stored and published, and put in the webhook outbox when the job's webhook asks for its kind
# (the record's `hookEvents`, e.g. ",completed,failed,"). Expects K.job, K.events, K.hooks,
# K.hook_bodies, A.channel, A.frame, A.fields, A.job_id, and (with `position`) K.wait and
# K.prioritized. Returns seq and the queue position (or -1).
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
  local hook = redis.call('HGET', K.job, 'hookEvents')
  if hook then  -- the job has a webhook: into the outbox, in the same script as the event
    local kind = string.match(A.frame, '^{"type":"job:(%a+)"')
    if kind and string.find(hook, ',' .. kind .. ',', 1, true) then
      local id = A.job_id .. ':' .. seq
      if kind == 'progress' or kind == 'preview' then id = A.job_id .. ':' .. kind end  -- the latest
      redis.call('HSET', K.hook_bodies, id, msg)
      redis.call('ZADD', K.hooks, 'NX', 0, id)
    end
  end
  return seq, pos
end

-- What a user keeps in Redis (`K.sizes`: job -> bytes charged; `K.kept`: job -> when its
-- records expire, ms; `K.usage`: user -> bytes, for all users): release what has expired.
local function reap_kept(now_ms)
  local gone = redis.call('ZRANGEBYSCORE', K.kept, '-inf', now_ms, 'LIMIT', 0, 500)
  if #gone == 0 then return end
  local freed = 0
  for _, id in ipairs(gone) do
    freed = freed + tonumber(redis.call('HGET', K.sizes, id) or '0')
  end
  redis.call('HDEL', K.sizes, unpack(gone))
  redis.call('ZREM', K.kept, unpack(gone))
  if redis.call('ZINCRBY', K.usage, -freed, A.user) + 0 <= 0 then redis.call('ZREM', K.usage, A.user) end
end

-- The owner's limits a job about to run must fit (CREATE, REOPEN), checked in the script that
-- then takes them: the unfinished-jobs cap, the high-priority share (for a `high` job), and,
-- when it is to be `charged`, the bytes kept. Returns the refusal {0, -2, what, limit[, used]}
-- or nil.
local function refusal(high, charged)
  if A.max_open ~= '' and redis.call('SCARD', K.open) >= tonumber(A.max_open) then
    return {0, -2, 'open', A.max_open}
  end
  if high and A.max_high ~= '' then
    local n = 0
    for _, id in ipairs(redis.call('SMEMBERS', K.open)) do
      if redis.call('HGET', NS .. 'job:' .. id, 'high') == '1' then n = n + 1 end
    end
    if n >= tonumber(A.max_high) then return {0, -2, 'high', A.max_high} end
  end
  reap_kept(A.now_ms)
  if charged and A.max_bytes ~= '' then
    local used = tonumber(redis.call('ZSCORE', K.usage, A.user) or '0')
    if used + tonumber(A.bytes) > tonumber(A.max_bytes) then return {0, -2, 'bytes', A.max_bytes, used} end
  end
  return nil
end

-- Charge the job's bytes to its owner (an earlier charge of the same id, not yet reaped, is
-- replaced), kept until the job is final and its records expire.
local function charge()
  local stale = redis.call('HGET', K.sizes, A.job_id)
  redis.call('ZINCRBY', K.usage, tonumber(A.bytes) - tonumber(stale or '0'), A.user)
  redis.call('HSET', K.sizes, A.job_id, A.bytes)
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
          "recent_n", "hooks", "hook_bodies", "fair", "pc", "usage", "sizes", "kept"),
    args=("channel", "frame", "fields", "job_id", "digest", "position", "fair_level", "fair_user", "fair_inc",
          "user", "now_ms", "bytes", "max_bytes", "max_open", "high", "max_high"),
    body=r"""
-- Fair share within a priority (start-time fair queuing): BullMQ scores a prioritized job
-- priority * 2^32 + a counter; ours replace the counter with a virtual start time. A user's
-- next job starts at max(where their last one ended, the level's head: the next job to be
-- served), and ends 1/weight later. So a user with 500 jobs waiting and one who comes along
-- with 1 alternate, a user of weight 2 gets two turns for one, a user back from idle gets no
-- credit, and FIFO holds within a user. When the level has nothing waiting, a job starts at the
-- latest end given (`last:`): as in SFQ, an idle level owes nobody a turn, so every clock then
-- is at or below the floor (and FAIR_PRUNE forgets it). BullMQ's counter (`pc`) is moved past
-- every end given, so jobs BullMQ scores itself (retried, promoted from delayed, added by plain
-- BullMQ with a priority) go to the back of their level, as in BullMQ.
local function fair_share()
  local base = tonumber(A.fair_level) * 4294967296
  local head = redis.call('ZRANGEBYSCORE', K.prioritized, base, base + 4294967295, 'WITHSCORES', 'LIMIT', 0, 2)
  local lastKey = 'last:' .. A.fair_level
  local floor
  for i = 1, #head, 2 do
    if head[i] ~= A.job_id then  -- just after the head (a tie would be broken by job id)
      floor = tonumber(head[i + 1]) - base + 1 / 1024
      break
    end
  end
  local last = tonumber(redis.call('HGET', K.fair, lastKey) or '0')
  if not floor then floor = last end
  local userKey = 'u:' .. A.fair_level .. ':' .. A.fair_user
  local v = math.max(tonumber(redis.call('HGET', K.fair, userKey) or '0'), floor)
  local fin = v + tonumber(A.fair_inc)
  redis.call('HSET', K.fair, userKey, string.format('%.17g', fin))
  if fin > last then redis.call('HSET', K.fair, lastKey, string.format('%.17g', fin)) end
  redis.call('ZADD', K.prioritized, string.format('%.17g', base + (v % 4294967296)), A.job_id)
  if tonumber(redis.call('GET', K.pc) or '0') < fin + 1 then
    redis.call('SET', K.pc, string.format('%d', math.floor(fin) + 1))
  end
end

local cur = redis.call('HMGET', K.job, 'queue', 'digest', 'status', 'userId')
if cur[2] then return {0, -1, cur[1] or '', cur[2], cur[3] or '', cur[4] or ''} end
if redis.call('EXISTS', K.bull_job) == 1 then return {0, -1, '', '', '', ''} end
-- The owner's limits, checked and taken here, in the script that creates the job: concurrent
-- submits cannot both pass a check that only one of them fits.
local refused = refusal(A.high == '1', true)
if refused then return refused end
local added = bull_add()
if type(added) == 'number' and added < 0 then
  return redis.error_reply('BullMQ refused job ' .. A.job_id .. ': code ' .. added)
end
if A.fair_inc ~= '' and redis.call('ZSCORE', K.prioritized, A.job_id) then fair_share() end
redis.call('HSET', K.job, 'digest', A.digest)
if A.high == '1' then redis.call('HSET', K.job, 'high', 1) end
charge()
redis.call('ZADD', K.kept, 'inf', A.job_id)  -- kept until it is final and its records expire
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


# reopen: a finished job is about to run again (a retry): its owner's limits are checked and
# taken as CREATE takes them, in one step, before the job is requeued: the unfinished-jobs cap,
# the high-priority share (for a job created as one: its record's `high`), and its bytes, kept
# again until it is final (charged again if they were released meanwhile). Returns {1}, or
# {0, -2, what, limit, bytes used} when refused.
REOPEN = Script(
    "reopen", keys=("job", "open", "usage", "sizes", "kept"),
    args=("job_id", "user", "now_ms", "bytes", "max_bytes", "max_open", "max_high"), body=r"""
if redis.call('SISMEMBER', K.open, A.job_id) == 1 then return {1} end
local released = redis.call('HEXISTS', K.sizes, A.job_id) == 0
local refused = refusal(redis.call('HGET', K.job, 'high') == '1', released)
if refused then return refused end
if released then charge() end
redis.call('ZADD', K.kept, 'inf', A.job_id)
redis.call('SADD', K.open, A.job_id)
return {1}
""")


# usage: what a user keeps in Redis now (bytes, after releasing what expired) and how many of
# their jobs are unfinished. Returns {bytes, unfinished}.
USAGE = Script(
    "usage", keys=("usage", "sizes", "kept", "open"), args=("user", "now_ms"), body=r"""
reap_kept(A.now_ms)
return {tonumber(redis.call('ZSCORE', K.usage, A.user) or '0'), redis.call('SCARD', K.open)}
""")


# fair_prune: forget the fair-share clocks that no longer matter. A user's clock at or below its
# level's floor gives them nothing: a job of theirs would start at the floor anyway. The floor is
# the level's head, or the latest end given (`last:`) when nothing waits, and never goes back: a
# fair job starts at or after it, a job BullMQ scores itself after `last`. So those fields go, and
# the hash holds only users whose next turn is ahead of the others' (none once the level idles).
# `fields`: field names (from HSCAN), newline-separated. Returns how many went. (The head lookup
# repeats fair_share's two lines: a shared function would ride in the prelude of every script.)
FAIR_PRUNE = Script(
    "fair_prune", keys=("fair", "prioritized"), args=("fields",), body=r"""
local floors, gone = {}, 0
for f in string.gmatch(A.fields, '[^\n]+') do
  local level = string.match(f, '^u:(%d+):')
  local v = level and tonumber(redis.call('HGET', K.fair, f) or '')
  if v then
    local floor = floors[level]
    if not floor then
      local base = tonumber(level) * 4294967296
      local head = redis.call('ZRANGEBYSCORE', K.prioritized, base, base + 4294967295, 'WITHSCORES', 'LIMIT', 0, 1)
      if #head > 0 then floor = tonumber(head[2]) - base
      else floor = tonumber(redis.call('HGET', K.fair, 'last:' .. level) or '0') end
      floors[level] = floor
    end
    if v <= floor then
      redis.call('HDEL', K.fair, f)
      gone = gone + 1
    end
  end
end
return gone
""")

# adopt_scan: the jobs a plain BullMQ producer added to a queue since the last scan: BullMQ's
# `added` events after the cursor (at most `count`), less the jobs that have a record of ours
# (our own adds, and those adopted). The job hash names are built here ({ns}job:{id}), as
# BullMQ's scripts build theirs, since they come from the stream. Returns {cursor, entries read, id, ...}.
ADOPT_SCAN = Script(
    "adopt_scan", keys=("bull_events", "cursor"), args=("count",), body=r"""
local from = redis.call('GET', K.cursor) or '0'
local entries = redis.call('XRANGE', K.bull_events, '(' .. from, '+', 'COUNT', tonumber(A.count))
local out = {from, #entries}
for _, entry in ipairs(entries) do
  out[1] = entry[1]
  local f = entry[2]
  if f[1] == 'event' and f[2] == 'added' and f[3] == 'jobId' then
    local rec = NS .. 'job:' .. f[4]
    if redis.call('HEXISTS', rec, 'digest') == 0 and redis.call('HEXISTS', rec, 'adopted') == 0 then
      out[#out + 1] = f[4]
    end
  end
end
if #entries > 0 then redis.call('SET', K.cursor, out[1]) end
return out
""")

# adopt: a job a plain BullMQ producer added gets what our adds give a job: a record, its user's
# history entry, the admins' list, the open set and (unless a consumer started it already) its
# `waiting` / `delayed` event. Nothing when it has a record of ours or BullMQ no longer has it.
# Returns {seq} (0: nothing done; -1: recorded, but it had started, so no event).
ADOPT = Script(
    "adopt",
    keys=("job", "events", "finished", "open", "history", "history_n", "wait", "prioritized", "bull_job", "recent",
          "recent_n", "hooks", "hook_bodies"),
    args=("channel", "frame", "fields", "job_id", "position", "user"),
    body=r"""
if redis.call('HEXISTS', K.job, 'digest') == 1 or redis.call('HEXISTS', K.job, 'adopted') == 1 then return {0} end
if redis.call('EXISTS', K.bull_job) == 0 then return {0} end
redis.call('HSET', K.job, 'adopted', 1)
if A.user ~= '' then
  local n = redis.call('INCR', K.history_n)
  redis.call('ZADD', K.history, n, A.job_id)
  local over = redis.call('ZCARD', K.history) - HISTORY_MAX
  if over > 0 then redis.call('ZREMRANGEBYRANK', K.history, 0, over - 1) end
end
redis.call('ZADD', K.recent, redis.call('INCR', K.recent_n), A.job_id)
local over = redis.call('ZCARD', K.recent) - RECENT_MAX
if over > 0 then redis.call('ZREMRANGEBYRANK', K.recent, 0, over - 1) end
local st = redis.call('HGET', K.job, 'status')
if st == 'completed' or st == 'failed' or st == 'cancelled' then return {-1} end
redis.call('SADD', K.open, A.job_id)
if st then return {-1} end
local seq = emit(A.position == '1')
return {seq}
""")


def with_bull_add(bull_source: str, bull_keys: int, bull_args: int) -> str:
    """The prelude of CREATE that runs one of BullMQ's add scripts (its text unchanged, as the
    body of a function whose KEYS and ARGV are the first `bull_keys` / `bull_args` of ours)."""
    return (f"local function bull_add_script(KEYS, ARGV)\n{bull_source}\nend\n"
            f"local function bull_add()\n"
            f"  return bull_add_script({{unpack(KEYS, 1, {bull_keys})}}, {{unpack(ARGV, 1, {bull_args})}})\nend\n")


# event: a non-final event of a live job: an attempt started, its progress, a preview, a log
# line (`log`: also appended to BullMQ's job log), or the job is waiting again (`live` = '1': retried, recovered, requeued). Returns {seq, position,
# 1 if a cancel was requested for the job else 0}.
# Fenced: an attempt's event (`token` = its BullMQ lock token) is refused once another attempt
# holds the job's lock, and any event but `live` once the job is final; a refused event returns
# {0, -1, 1}, which tells a stale attempt to stop as if cancelled.
EVENT = Script(
    "event",
    keys=("job", "events", "finished", "open", "cancel", "wait", "prioritized", "lock", "logs", "bull_job",
          "bull_events", "bull_meta", "hooks", "hook_bodies"),
    args=("channel", "frame", "fields", "job_id", "live", "position", "token", "log", "progress"),
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
if A.log ~= '' then  -- a log line: kept in BullMQ's job log too (its newest LOGS_MAX lines)
  redis.call('RPUSH', K.logs, A.log)
  redis.call('LTRIM', K.logs, -LOGS_MAX, -1)
end
if A.progress ~= '' and redis.call('EXISTS', K.bull_job) == 1 then
  -- mirrored as BullMQ's updateProgress does: the job's `progress`, a `progress` event for QueueEvents
  local maxEvents = redis.call('HGET', K.bull_meta, 'opts.maxLenEvents')
  if not maxEvents then
    maxEvents = 10000
    redis.call('HSET', K.bull_meta, 'opts.maxLenEvents', maxEvents)
  end
  redis.call('HSET', K.bull_job, 'progress', A.progress)
  redis.call('XADD', K.bull_events, 'MAXLEN', '~', maxEvents, '*', 'event', 'progress', 'jobId', A.job_id,
             'data', A.progress)
end
return {seq, pos, redis.call('EXISTS', K.cancel)}
""")

# finish: the final event (completed, failed, cancelled). With `finished_on`, only if BullMQ's
# job holds that finishedOn (the completion in the same round trip was ours). Counts the run
# time in the queue's histogram (`bucket` '' for none), starts the record's expiry and trims
# the queue's finished jobs to the retention. Returns {seq}, or {0} when the guard refused.
FINISH = Script(
    "finish",
    keys=("job", "events", "finished", "open", "cancel", "durations", "bull_job", "hooks", "hook_bodies", "kept"),
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
redis.call('ZADD', K.kept, 'XX', tonumber(A.now_ms) + TTL * 1000, A.job_id)  -- its owner's bytes, until then
redis.call('SREM', K.open, A.job_id)
redis.call('DEL', K.cancel)
redis.call('ZADD', K.finished, A.now_ms, A.job_id)
local excess = redis.call('ZCARD', K.finished) - KEEP
if excess > 0 then
  local old = redis.call('ZRANGE', K.finished, 0, excess - 1)
  for _, id in ipairs(old) do
    local owner = redis.call('HGET', NS .. 'job:' .. id, 'userId')
    if owner then redis.call('ZADD', NS .. 'kept:' .. owner, 'XX', 0, id) end  -- released at the next reap
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
    keys=("job", "lock", "yield"),
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
return {1, prev, redis.call('EXISTS', K.yield)}
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
