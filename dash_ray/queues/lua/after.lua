--[[
  Make a new job wait for others (`options.after`), on BullMQ's flow layout: run in the MULTI
  of its create, which added it with BullMQ's addParentJob (in `waiting-children`). Each job it
  waits for that has not ended goes into its `dependencies` (BullMQ's key of it) and names it
  in its waiters (finish.lua releases it when that job ends: includes/release); one ended
  already counts at once, as release would count it. With nothing left to wait for, it moves to
  wait. A job may have many waiters (BullMQ's `parent` field, one per job, is left alone: a
  flow's child can be waited for too).

  Input:
    KEYS[1] bull_job          BullMQ's hash of the new job
    KEYS[2] waiting_children  BullMQ's waiting-children set of its queue

    ARGV[1] job_id
    ARGV[2] queue_key   BullMQ's key prefix of its queue (`bull:<queue>`)
    ARGV[3] policy      'fail' or 'ignore': what one of them failing does to it
    ARGV[4...]          pairs: the id of a job it waits for, BullMQ's key of that job

  Output:
    {1, pending}: it waits for `pending` jobs (0: it was moved to wait, or fails in advance)
    {0}: not made (its create was refused, or answered from elsewhere): nothing done
]]
--- @include "includes/final"
--- @include "includes/keys"
--- @include "includes/release"
if not redis.call('ZSCORE', K_waiting_children, A_job_id) then return {0} end
local how = A_policy .. '\31' .. A_queue_key .. '\31' .. A_job_id
local pending = 0
for i = 4, #ARGV, 2 do
  local dep, dep_key = ARGV[i], ARGV[i + 1]
  local status = redis.call('HGET', job_key(dep), 'status')
  redis.call('SADD', K_bull_job .. ':dependencies', dep_key)
  if status and not FINAL[status] then
    redis.call('HSET', waiters_key(dep), K_bull_job, how)
    pending = pending + 1
  else
    local value = redis.call('HGET', dep_key, 'returnvalue') or 'null'
    release(dep_key, K_bull_job, how, status == COMPLETED, value, 'job ' .. dep .. ' ' .. (status or 'is gone'))
  end
end
if pending == 0 then to_wait(A_queue_key, K_bull_job, A_job_id) end
return {1, pending}
