--[[
  A non-final event of a live job: an attempt started, its progress, a preview, a log line
  (`log`: also appended to BullMQ's job log), or the job is waiting again (`live` = '1': retried,
  recovered, requeued).
  Fenced: an attempt's event (`token` = its BullMQ lock token) is refused once another attempt
  holds the job's lock, and any event but `live` once the job is final; a refused event returns
  {0, -1, 1}, which tells a stale attempt to stop as if cancelled.

  Input:
    KEYS[1]  job          our record of the job
    KEYS[2]  events       its replay stream
    KEYS[3]  finished     its queue's finished jobs
    KEYS[4]  open         its owner's unfinished jobs
    KEYS[5]  cancel       its cancel flag
    KEYS[6]  wait         BullMQ's wait list of its queue
    KEYS[7]  prioritized  BullMQ's prioritized set of its queue
    KEYS[8]  lock         BullMQ's lock of the job
    KEYS[9]  logs         BullMQ's log of the job
    KEYS[10] bull_job     BullMQ's job hash
    KEYS[11] bull_events  BullMQ's event stream of its queue
    KEYS[12] bull_meta    BullMQ's meta hash of its queue
    KEYS[13] hooks        the webhook outbox: deliveries due
    KEYS[14] hook_bodies  the webhook outbox: their bodies

    ARGV[1] channel       its live channel
    ARGV[2] frame         the event, without its closing brace
    ARGV[3] fields        the state fields it sets (key, value, ... joined by \31)
    ARGV[4] job_id
    ARGV[5] live          '1': the job waits again (not once it is final); '2': it is reopened
                          (a retry of a final job)
    ARGV[6] position      '1': the frame shows the queue position
    ARGV[7] token         the attempt's lock token ('' : not an attempt's)
    ARGV[8] log           a log line for BullMQ's job log ('' for none)
    ARGV[9] progress      the progress to mirror on BullMQ's job ('' for none)

  Output:
    {seq, position (-1: none), 1 if a cancel was requested for the job else 0}; {0, -1, 1}: refused
]]
--- @include "includes/fenced_out"
--- @include "includes/emit"
--- @include "includes/queue_position"
--- @include "includes/live_again"
local cur = redis.call('HMGET', K_job, 'status', 'boot')
if A_live == '1' and FINAL[cur[1]] then  -- a late `waiting again` (a recovery's) of a job over since
  return {0, -1, redis.call('EXISTS', K_cancel)}
elseif A_live ~= '' then  -- '1', or '2': a retry reopens a final job
  live_again()
elseif fenced_out(cur[1], K_lock, A_token) then
  return {0, -1, 1}
end
local pos = -1
if A_position == '1' then pos = queue_position(K_wait, K_prioritized, A_job_id) end
local seq = emit(pos, true, cur[2])
if A_log ~= '' then  -- a log line: kept in BullMQ's job log too (its newest LOGS_MAX lines)
  redis.call('RPUSH', K_logs, A_log)
  redis.call('LTRIM', K_logs, -LOGS_MAX, -1)
end
if A_progress ~= '' and redis.call('EXISTS', K_bull_job) == 1 then
  -- mirrored as BullMQ's updateProgress does: the job's `progress`, a `progress` event for QueueEvents
  local maxEvents = redis.call('HGET', K_bull_meta, 'opts.maxLenEvents')
  if not maxEvents then
    maxEvents = 10000
    redis.call('HSET', K_bull_meta, 'opts.maxLenEvents', maxEvents)
  end
  redis.call('HSET', K_bull_job, 'progress', A_progress)
  redis.call('XADD', K_bull_events, 'MAXLEN', '~', maxEvents, '*', 'event', 'progress', 'jobId', A_job_id,
             'data', A_progress)
end
return {seq, pos, redis.call('EXISTS', K_cancel)}
