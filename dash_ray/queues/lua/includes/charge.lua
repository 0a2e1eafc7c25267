--[[
  charge(): charge the job's bytes to its owner (an earlier charge of the same id, not yet
  reaped, is replaced), kept until the job is final and its records expire.

  Uses KEYS usage, sizes; ARGV job_id, user, bytes.
]]
local function charge()
  local stale = redis.call('HGET', K_sizes, A_job_id)
  redis.call('ZINCRBY', K_usage, tonumber(A_bytes) - tonumber(stale or '0'), A_user)
  redis.call('HSET', K_sizes, A_job_id, A_bytes)
end
