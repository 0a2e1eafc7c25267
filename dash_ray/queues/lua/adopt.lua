--[[
  A job a plain BullMQ producer added gets what our adds give a job: a record, its user's history
  entry, the admins' list, the open set and (unless a consumer started it already) its `waiting`
  / `delayed` event. Nothing when it has a record of ours or BullMQ no longer has it.

  Input:
    KEYS[1]  job          our record of the job
    KEYS[2]  events       its replay stream
    KEYS[3]  finished     (unused: every event script is given the keys an event may touch)
    KEYS[4]  open         its owner's unfinished jobs
    KEYS[5]  history      its owner's jobs
    KEYS[6]  history_n    the counter behind `history`
    KEYS[7]  wait         BullMQ's wait list of its queue
    KEYS[8]  prioritized  BullMQ's prioritized set of its queue
    KEYS[9]  bull_job     BullMQ's job hash
    KEYS[10] recent       every user's jobs (the admins' list)
    KEYS[11] recent_n     the counter behind `recent`
    KEYS[12] hooks        the webhook outbox: deliveries due
    KEYS[13] hook_bodies  the webhook outbox: their bodies

    ARGV[1] channel       its live channel
    ARGV[2] frame         the `waiting` / `delayed` event, without its closing brace
    ARGV[3] fields        the state fields of the record (key, value, ... joined by \31)
    ARGV[4] job_id
    ARGV[5] position      '1': the frame shows the queue position
    ARGV[6] user          its owner ('' for none: no history entry)
    ARGV[7] feed          the channel every new job's first event is also published on

  Output:
    {seq}; {0}: nothing done; {-1}: recorded, but it had started, so no event
]]
--- @include "includes/final"
--- @include "includes/emit"
--- @include "includes/queue_position"
--- @include "includes/append_capped"
if redis.call('HEXISTS', K_job, 'digest') == 1 or redis.call('HEXISTS', K_job, 'adopted') == 1 then return {0} end
if redis.call('EXISTS', K_bull_job) == 0 then return {0} end
redis.call('HSET', K_job, 'adopted', 1)
if A_user ~= '' then append_capped(K_history, K_history_n, A_job_id, HISTORY_MAX) end
append_capped(K_recent, K_recent_n, A_job_id, RECENT_MAX)
local st = redis.call('HGET', K_job, 'status')
if FINAL[st] then return {-1} end
redis.call('SADD', K_open, A_job_id)
if st then return {-1} end
local pos = -1
if A_position == '1' then pos = queue_position(K_wait, K_prioritized, A_job_id) end
local seq = emit(pos)
redis.call('PUBLISH', A_feed, emitted)
return {seq}
