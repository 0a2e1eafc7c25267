--[[
  Jobs of this queue no longer hold their GPU share (queues/shares.py): their attempt ended, or
  (`unlocked`) their lock is gone (a consumer that died, a job put back). Each is uncounted from
  the share of everyone it was counted against, and for each of them the `most` oldest jobs
  parked for their share go back to be taken (hold.lua parks them again if it is still full):
  out of `waiting-children`, to the front of their priority (BullMQ's own place for a job put
  back), the queue's marker set unless it is paused. A parked job gone meanwhile (cancelled) is
  dropped.

  Input:
    KEYS[1] held     this queue's counted jobs: job -> `<milli>\31<who>[\31<who>]`
    KEYS[2] holding  user or org:<group> -> milli-GPUs held now

    ARGV[1] job_prefix  `<prefix>:<queue>:` (this queue's)
    ARGV[2] unlocked    '1': every counted job of this queue whose lock is gone (no jobs given)
    ARGV[3] most        parked jobs to put back per user or group, at most
    ARGV[4...]          the jobs

  Output:
    {jobs uncounted, parked jobs put back}
]]
--- @include "includes/keys"
local function split(s)
  local parts, from = {}, 1
  while true do
    local i = string.find(s, '\31', from, true)
    if not i then parts[#parts + 1] = string.sub(s, from); return parts end
    parts[#parts + 1] = string.sub(s, from, i - 1)
    from = i + 1
  end
end

local back = 0
local function unpark(who)
  local key = parked_key(who)
  local members = redis.call('ZRANGE', key, 0, tonumber(A_most) - 1)
  for _, m in ipairs(members) do
    redis.call('ZREM', key, m)
    local sep = string.find(m, '\31', 1, true)
    local prefix, id = string.sub(m, 1, sep - 1), string.sub(m, sep + 1)
    local qk = string.sub(prefix, 1, -2)
    if redis.call('ZREM', qk .. ':waiting-children', id) == 1 then
      local priority = tonumber(redis.call('HGET', prefix .. id, 'priority')) or 0
      if priority > 0 then
        redis.call('ZADD', qk .. ':prioritized', priority * 0x100000000, id)
      else
        redis.call('RPUSH', qk .. ':wait', id)
      end
      if not redis.call('HGET', qk .. ':meta', 'paused') then redis.call('ZADD', qk .. ':marker', 0, '0') end
      redis.call('XADD', qk .. ':events', '*', 'event', 'waiting', 'jobId', id, 'prev', 'waiting-children')
      back = back + 1
    end
  end
end

local function release(id)
  local raw = redis.call('HGET', K_held, id)
  if not raw then return 0 end
  redis.call('HDEL', K_held, id)
  local parts = split(raw)
  local milli = tonumber(parts[1])
  for i = 2, #parts do
    if redis.call('HINCRBY', K_holding, parts[i], -milli) <= 0 then redis.call('HDEL', K_holding, parts[i]) end
    unpark(parts[i])
  end
  return 1
end

local n = 0
if A_unlocked == '1' then
  for _, id in ipairs(redis.call('HKEYS', K_held)) do
    if redis.call('EXISTS', A_job_prefix .. id .. ':lock') == 0 then n = n + release(id) end
  end
else
  for i = 4, #ARGV do n = n + release(ARGV[i]) end
end
return {n, back}
