--[[
  A finished job is about to run again (a retry): its owner's limits are checked and taken as
  create takes them, in one step, before the job is requeued: the unfinished-jobs cap, the
  high-priority share (for a job created as one: its record's `high`), and its bytes, kept again
  until it is final (charged again if they were released meanwhile).

  Input:
    KEYS[1] job     our record of the job
    KEYS[2] open    its owner's unfinished jobs
    KEYS[3] usage   bytes each user keeps
    KEYS[4] sizes   its owner's job -> bytes charged
    KEYS[5] kept    its owner's job -> when its records expire

    ARGV[1] job_id
    ARGV[2] user       its owner
    ARGV[3] now_ms
    ARGV[4] bytes      what it is charged
    ARGV[5] max_bytes  limits ('' for none)
    ARGV[6] max_open
    ARGV[7] max_high

  Output:
    {1}: taken (or it was unfinished already)
    {0, -2, what, limit[, used]}: refused
]]
--- @include "includes/refusal"
--- @include "includes/charge"
if redis.call('SISMEMBER', K_open, A_job_id) == 1 then return {1} end
local released = redis.call('HEXISTS', K_sizes, A_job_id) == 0
local refused = refusal(redis.call('HGET', K_job, 'high') == '1', released)
if refused then return refused end
if released then charge() end
redis.call('ZADD', K_kept, 'inf', A_job_id)
redis.call('SADD', K_open, A_job_id)
return {1}
