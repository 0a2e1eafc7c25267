--[[
  emit(pos, known, last): the job's next event. The next seq; the frame completed (`A_frame` is
  the event's JSON without its closing brace: `,"queuePosition":N` is appended when `pos` > 0,
  then `,"seq":N}`); the job hash takes the state fields of `A_fields` (key, value, ... joined
  by \31); the frame is stored in the job's replay stream, published on its channel, and put in
  the webhook outbox when the job's webhook asks for its kind (the record's `hookEvents`, e.g.
  ",completed,failed,"). `known`: the caller read the job's `boot` field already (`last`).
  Returns the seq.

  A seq never repeats, even when Redis restarts from an append-only file that lost its last
  second of writes (events clients may have seen): the job hash keeps the server's LASTSAVE (its
  start time, or its last RDB save) of its last event, and when that changed, the next seq jumps
  by SEQ_GAP, more than any job publishes in the writes a restart can lose.

  Uses KEYS job, events, hooks, hook_bodies; ARGV channel, frame, fields, job_id. The frame as
  sent is left in `emitted` (a script that announces a new job publishes it on the feed too).
]]
--- @include "split"
local SEQ_GAP = 1000
local emitted
local function emit(pos, known, last)
  local boot = redis.call('LASTSAVE')
  if not known then last = redis.call('HGET', K_job, 'boot') end
  local step = 1
  if last and tonumber(last) ~= boot then step = SEQ_GAP end
  local seq = redis.call('HINCRBY', K_job, 'seq', step)
  local body = A_frame
  if pos > 0 then body = body .. ',"queuePosition":' .. pos end
  local msg = body .. ',"seq":' .. seq .. '}'
  local fields = split(A_fields)
  if tonumber(last) ~= boot then  -- with the state fields: one write
    fields[#fields + 1] = 'boot'
    fields[#fields + 1] = boot
  end
  if #fields >= 2 then redis.call('HSET', K_job, unpack(fields)) end
  redis.call('XADD', K_events, 'MAXLEN', '~', MAXLEN, seq .. '-0', 'm', msg)
  redis.call('PUBLISH', A_channel, msg)
  emitted = msg
  local hook = redis.call('HGET', K_job, 'hookEvents')
  if hook then  -- the job has a webhook: into the outbox, in the same script as the event
    local kind = string.match(A_frame, '^{"type":"job:(%a+)"')
    if kind and string.find(hook, ',' .. kind .. ',', 1, true) then
      local id = A_job_id .. ':' .. seq
      if kind == 'progress' or kind == 'preview' then id = A_job_id .. ':' .. kind end  -- the latest
      redis.call('HSET', K_hook_bodies, id, msg)
      redis.call('ZADD', K_hooks, 'NX', 0, id)
    end
  end
  return seq
end
