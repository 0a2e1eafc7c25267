--[[
  The final event (completed, failed, cancelled). With `finished_on`, only if BullMQ's job holds
  that finishedOn (the completion in the same round trip was ours). Counts the run time in the
  queue's histogram (`bucket` '' for none), starts the record's expiry and trims the queue's
  finished jobs to the retention (the records of the jobs trimmed: keys built here, `job_key`...,
  since their ids are read here). The jobs waiting for it (`options.after`) are released.

  Input:
    KEYS[1]  job          our record of the job
    KEYS[2]  events       its replay stream
    KEYS[3]  finished     its queue's finished jobs
    KEYS[4]  open         its owner's unfinished jobs
    KEYS[5]  cancel       its cancel flag (and CANCELLING in `job`: both go)
    KEYS[6]  durations    its queue's run-time histogram (and its count of jobs ended, by status)
    KEYS[7]  bull_job     BullMQ's job hash
    KEYS[8]  hooks        the webhook outbox: deliveries due
    KEYS[9]  hook_bodies  the webhook outbox: their bodies
    KEYS[10] kept         its owner's job -> when its records expire
    KEYS[11] settle       its queue's ended jobs whose followers are to end too

    ARGV[1] channel       its live channel
    ARGV[2] frame         the event, without its closing brace
    ARGV[3] fields        the state fields it sets (key, value, ... joined by \31)
    ARGV[4] job_id
    ARGV[5] now_ms
    ARGV[6] finished_on   the guard: BullMQ's finishedOn of our completion ('' for none)
    ARGV[7] bucket        the histogram field of its run time ('' for none)
    ARGV[8] seconds       its run time

  Output:
    {seq}; {0}: the guard refused, or the job was final already
]]
--- @include "includes/final"
--- @include "includes/keys"
--- @include "includes/emit"
--- @include "includes/after"
if A_finished_on ~= '' and redis.call('HGET', K_bull_job, 'finishedOn') ~= A_finished_on then
  return {0}
end
redis.call('HDEL', K_job, CANCELLING)  -- the final status is (or was) written: the marker's work is done
local was = redis.call('HMGET', K_job, 'status', 'cacheKey')
if FINAL[was[1]] then return {0} end
local seq = emit(-1)
local ended = redis.call('HGET', K_job, 'status')
redis.call('HINCRBY', K_durations, 'ended:' .. (ended or '?'), 1)  -- jobs ended, by final status
if was[2] then  -- a repeatable payload's run: its result is the cache's while its record lives
  if ended == COMPLETED then
    redis.call('SET', was[2], A_job_id, 'EX', TTL)
  elseif redis.call('GET', was[2]) == A_job_id then
    redis.call('DEL', was[2])
  end
  if redis.call('EXISTS', followers_key(A_job_id)) == 1 then  -- they end as it did (the consumer's upkeep)
    redis.call('ZADD', K_settle, A_now_ms, A_job_id)
  end
end
local waiting = redis.call('HGETALL', waiters_key(A_job_id))
if #waiting > 0 then  -- the jobs waiting for this one (includes/after): it counts for them now
  for i = 1, #waiting, 2 do
    release(A_job_id, waiting[i], waiting[i + 1], ended == COMPLETED, 'job ' .. A_job_id .. ' ' .. (ended or '?'))
  end
  redis.call('DEL', waiters_key(A_job_id))
end
forget(A_job_id)  -- and those it waited for name it no more
if A_bucket ~= '' then
  redis.call('HINCRBY', K_durations, A_bucket, 1)
  redis.call('HINCRBYFLOAT', K_durations, 'sum', A_seconds)
end
redis.call('EXPIRE', K_job, TTL)
redis.call('EXPIRE', K_events, TTL)
redis.call('ZADD', K_kept, 'XX', tonumber(A_now_ms) + TTL * 1000, A_job_id)  -- its owner's bytes, until then
redis.call('SREM', K_open, A_job_id)
redis.call('DEL', K_cancel)
redis.call('ZADD', K_finished, A_now_ms, A_job_id)
local excess = redis.call('ZCARD', K_finished) - KEEP
if excess > 0 then
  local old = redis.call('ZRANGE', K_finished, 0, excess - 1)
  for _, id in ipairs(old) do
    local owner = redis.call('HGET', job_key(id), 'userId')
    if owner then redis.call('ZADD', kept_key(owner), 'XX', 0, id) end  -- released at the next reap
    redis.call('DEL', job_key(id), events_key(id))
  end
  redis.call('ZREMRANGEBYRANK', K_finished, 0, excess - 1)
end
return {seq}
