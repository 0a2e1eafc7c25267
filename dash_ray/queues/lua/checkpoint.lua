--[[
  Make `path` (an artifact this attempt wrote) the job's checkpoint, only while the attempt
  (`token`, its BullMQ lock token) holds the job and the job is not final: a stale attempt's
  checkpoint never replaces the running attempt's.

  Input:
    KEYS[1] job    our record of the job
    KEYS[2] lock   BullMQ's lock of the job
    KEYS[3] yield  its flag: asked to yield its GPU

    ARGV[1] token  the attempt's lock token
    ARGV[2] path

  Output:
    {1, the path it replaced or '', 1 if asked to yield else 0}; {0, ''}: refused
]]
--- @include "includes/fenced_out"
if fenced_out(redis.call('HGET', K_job, 'status'), K_lock, A_token) then return {0, ''} end
local prev = redis.call('HGET', K_job, 'checkpoint') or ''
redis.call('HSET', K_job, 'checkpoint', A_path)
return {1, prev, redis.call('EXISTS', K_yield)}
