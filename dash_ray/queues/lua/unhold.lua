--[[
  Jobs of this queue no longer hold their GPU share (queues/shares.py): the attempts holding it
  (their lock tokens) ended, or (`unlocked`, every few seconds) a counted job's lock is gone and
  it is not in BullMQ's `active` (its consumer died, or it was put back). Each is uncounted from
  the share of everyone it was counted against; an attempt whose job is counted under another
  token now (taken again since) gives back nothing. For each of them, the `most` oldest jobs
  parked for their share go back to be taken (hold.lua parks them again if it is still full): out
  of `waiting-children`, to the front of their priority (BullMQ's place for a job put back), the
  queue's marker set unless it is paused. An entry whose job is not parked for them any more
  (cancelled, removed, its id reused) is dropped without counting; at most SCAN are looked at
  per call. `unlocked` also puts back jobs of everyone with parked jobs who holds nothing now
  (their cap was lifted, or what they held was given back meanwhile).

  Input:
    KEYS[1] held     this queue's counted jobs: job -> `<milli>\31<token>\31<who>[\31<who>]`
    KEYS[2] holding  user or org:<group> -> milli-GPUs held now
    KEYS[3] parkers  the users and groups with parked jobs
    KEYS[4] active   BullMQ's active list of this queue

    ARGV[1] job_prefix  `<prefix>:<queue>:` (this queue's)
    ARGV[2] unlocked    '1': the sweep (no jobs given)
    ARGV[3] most        parked jobs to put back per user or group, at most
    ARGV[4...]          (job, lock token) pairs

  Output:
    {jobs uncounted, parked jobs put back}
]]
--- @include "includes/keys"
--- @include "includes/split"
local SCAN = 50
local back = 0
local function unpark(who)
  local key = parked_key(who)
  local n = 0
  for _, m in ipairs(redis.call('ZRANGE', key, 0, SCAN - 1)) do
    if n >= tonumber(A_most) then break end
    redis.call('ZREM', key, m)
    local sep = string.find(m, '\31', 1, true)
    local prefix, id = string.sub(m, 1, sep - 1), string.sub(m, sep + 1)
    local qk = string.sub(prefix, 1, -2)
    if redis.call('HGET', job_key(id), 'parked') == who and redis.call('ZSCORE', qk .. ':waiting-children', id) then
      redis.call('ZREM', qk .. ':waiting-children', id)
      redis.call('HDEL', job_key(id), 'parked')
      local priority = tonumber(redis.call('HGET', prefix .. id, 'priority')) or 0
      if priority > 0 then
        redis.call('ZADD', qk .. ':prioritized', priority * 0x100000000, id)
      else
        redis.call('RPUSH', qk .. ':wait', id)
      end
      if not redis.call('HGET', qk .. ':meta', 'paused') then redis.call('ZADD', qk .. ':marker', 0, '0') end
      redis.call('XADD', qk .. ':events', '*', 'event', 'waiting', 'jobId', id, 'prev', 'waiting-children')
      n = n + 1
      back = back + 1
    end
  end
  if redis.call('ZCARD', key) == 0 then redis.call('SREM', K_parkers, who) end
end

local function release(id, token)
  local raw = redis.call('HGET', K_held, id)
  if not raw then return 0 end
  local parts = split(raw)
  if token and parts[2] ~= token then return 0 end
  redis.call('HDEL', K_held, id)
  local milli = tonumber(parts[1])
  for i = 3, #parts do
    if redis.call('HINCRBY', K_holding, parts[i], -milli) <= 0 then redis.call('HDEL', K_holding, parts[i]) end
    unpark(parts[i])
  end
  return 1
end

local n = 0
if A_unlocked == '1' then
  for _, id in ipairs(redis.call('HKEYS', K_held)) do
    if redis.call('EXISTS', A_job_prefix .. id .. ':lock') == 0 and not redis.call('LPOS', K_active, id) then
      n = n + release(id, nil)
    end
  end
  for _, who in ipairs(redis.call('SMEMBERS', K_parkers)) do
    if not redis.call('HGET', K_holding, who) then unpark(who) end
  end
else
  for i = 4, #ARGV, 2 do n = n + release(ARGV[i], ARGV[i + 1]) end
end
return {n, back}
