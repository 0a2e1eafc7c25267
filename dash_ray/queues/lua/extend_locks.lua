--[[
  BullMQ's extendLocks, plus: a lock that expired while its consumer could not reach Redis (an
  outage longer than the lock) is taken back if the job is still active and not yet handed to
  anyone else. BullMQ's stalled check moves a job only on its second pass, so a consumer that
  renews within one stalled interval of Redis coming back keeps its running jobs.

  Input:
    KEYS[1] stalled    BullMQ's stalled set of the queue
    KEYS[2] active     BullMQ's active list of the queue

    ARGV[1] lock_base  the queue's BullMQ key base (`Keys.bull(queue, '')`): a job's lock is
                       base .. id .. ':lock' (`Keys.bull_lock`)
    ARGV[2] lock_ms
    ARGV[3...]         job id, token, job id, token, ...

  Output:
    the ids whose lock is someone else's now
]]
local failed = {}
for i = 3, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local lockKey = A_lock_base .. id .. ':lock'
  local cur = redis.call('GET', lockKey)
  if cur == token or (not cur and redis.call('LPOS', K_active, id)) then
    redis.call('SET', lockKey, token, 'PX', A_lock_ms)
    redis.call('SREM', K_stalled, id)
  else
    failed[#failed + 1] = id
  end
end
return failed
