--[[
  Take the next job (BullMQ's moveToActive, run as the function `bull_take(now_ms)` over the
  KEYS and ARGV before these; see `with_bull_take` in lua.py) at Redis's own clock, and publish
  the `active` event of the job it took, in the same script: the first job a take hands out
  shows as started without a round trip back to the consumer or a wait on the Ray call (the
  worker publishes no start of its own for it). A consumer waiting for work queues this behind
  its BZPOPMIN on BullMQ's marker, so Redis runs it the moment the wait ends: the timestamp the
  consumer would send (`processedOn`, which delayed jobs are due, the lock's start) would be as
  old as the wait.

  The event is `lifecycle.started_event`'s, built in Python with marks (`started_marks`) that
  this script fills in: the job id (a JSON string), its owner (our record's `userId`; none: the
  owner's part is cut), the attempt and attempts (BullMQ's `atm` + 1 and `opts.attempts`), the
  time. The taken job's keys are built here (`job_key`, `events_key`, `channel_key`...): the
  names `job`, `events`, `channel` and `job_id` below are placeholders, set once the id is known.

  Input:
    KEYS[1]  job          (a placeholder: the taken job's record)
    KEYS[2]  events       (a placeholder: its replay stream)
    KEYS[3]  hooks        the webhook outbox: deliveries due
    KEYS[4]  hook_bodies  the webhook outbox: their bodies

    ARGV[1] frame         the `active` event's frame, with the marks
    ARGV[2] fields        its state fields (key, value, ... joined by \31), with the marks
    ARGV[3] channel       (a placeholder: its live channel)
    ARGV[4] job_id        (a placeholder)
    ARGV[5] queue         its queue (a record of the id in another queue is not announced here)

  Output:
    {moveToActive's reply, the `active` event's seq (0: none published), 1 if a cancel was
    requested for the job else 0, Redis's time in ms}
]]
--- @include "includes/final"
--- @include "includes/keys"
--- @include "includes/emit"
local function put(s, mark, value)  -- every `mark` in s replaced by value (plain text, no patterns)
  local out, from = {}, 1
  while true do
    local i, j = string.find(s, mark, from, true)
    if not i then break end
    out[#out + 1] = string.sub(s, from, i - 1)
    out[#out + 1] = value
    from = j + 1
  end
  out[#out + 1] = string.sub(s, from)
  return table.concat(out)
end

local function fill(s, marks)  -- the marks ({mark, value}, ...) filled in one pass over the template
  local out, from = {}, 1
  while true do
    local at, hit
    for _, m in ipairs(marks) do
      local i = string.find(s, m[1], from, true)
      if i and (not at or i < at) then at, hit = i, m end
    end
    if not at then break end
    out[#out + 1] = string.sub(s, from, at - 1)
    out[#out + 1] = hit[2]
    from = at + #hit[1]
  end
  out[#out + 1] = string.sub(s, from)
  return table.concat(out)
end

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now = string.format('%d', now_ms)
local taken = bull_take(now)
local id = taken[2]
if type(taken[1]) ~= 'table' or not id or id == 0 or id == '' then return {taken, 0, 0, now} end
id = tostring(id)
-- Not announced here (its worker publishes its fenced start, as for the jobs a take does not
-- hand out first): a record still `active`, whose last attempt's end is not written yet (a retry
-- or a requeue: BullMQ's move woke this take before the `retrying` / `waiting` event that follows
-- it, which must come first); a final record, or one of another queue (another job with this id).
local cur = redis.call('HMGET', job_key(id), 'status', 'queue', 'startBy', 'started')
if cur[1] == 'active' or FINAL[cur[1]] or (cur[2] and cur[2] ~= A_queue) then
  return {taken, 0, redis.call('EXISTS', cancel_key(id)), now}
end
local atm, attempts = 0, 1
local data = taken[1]
for i = 1, #data, 2 do
  if data[i] == 'defa' then  -- BullMQ's deferred failure: it fails as taken, it never starts
    return {taken, 0, redis.call('EXISTS', cancel_key(id)), now}
  elseif data[i] == 'atm' then
    atm = tonumber(data[i + 1]) or 0
  elseif data[i] == 'opts' then
    local ok, opts = pcall(cjson.decode, data[i + 1])
    if ok and type(opts) == 'table' and tonumber(opts.attempts) then attempts = tonumber(opts.attempts) end
  end
end
if not cur[4] and tonumber(cur[3]) and tonumber(cur[3]) < now_ms then
  -- Never started (a job put back after it started keeps its `started`), and past its deadline to
  -- start (`startBy`, ms): the consumer ends it `expired`.
  return {taken, 0, redis.call('EXISTS', cancel_key(id)), now}
end
K_job, K_events, A_channel, A_job_id = job_key(id), events_key(id), channel_key(id), id
local owner = redis.call('HGET', K_job, 'userId')
local frame, fields = A_frame, A_fields
if not owner then  -- no owner: its part goes (cut from the template, before anything is filled in)
  frame = put(frame, ',"userId":"' .. MARK_USER .. '"', '')
  fields = put(fields, '\31userId\31' .. MARK_USER, '')
end
local ts = t[1] .. '.' .. string.format('%03d', math.floor(tonumber(t[2]) / 1000))
local attempt = tostring(atm + 1)
A_frame = fill(frame, {{'"' .. MARK_JOB .. '"', cjson.encode(id)}, {'"' .. MARK_USER .. '"', cjson.encode(owner or '')},
                       {MARK_ATTEMPTS, tostring(attempts)}, {MARK_ATTEMPT, attempt}, {MARK_TS, ts}})
A_fields = fill(fields, {{MARK_USER, owner or ''}, {MARK_ATTEMPTS, tostring(attempts)}, {MARK_ATTEMPT, attempt},
                         {MARK_TS, ts}})
local seq = emit(-1)
redis.call('HDEL', K_job, CANCELLING)  -- an earlier attempt's, left by a crash before its final event
return {taken, seq, redis.call('EXISTS', cancel_key(id)), now}
