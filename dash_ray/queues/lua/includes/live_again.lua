--[[
  live_again(): the job is unfinished again (created, or waiting again): its records no longer
  expire, it leaves its queue's finished jobs and joins its owner's unfinished ones.

  Uses KEYS job, events, finished, open; ARGV job_id.
]]
local function live_again()
  redis.call('PERSIST', K_job)
  redis.call('PERSIST', K_events)
  redis.call('ZREM', K_finished, A_job_id)
  redis.call('SADD', K_open, A_job_id)
end
