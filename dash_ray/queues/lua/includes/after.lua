--[[
  Jobs that wait for others (`options.after`). A waiting job W sits in BullMQ's
  `waiting-children` (added with addParentJob) with BullMQ's `dependencies` left empty, so
  BullMQ's own flow keys stay a real flow's (a Node client's remove of W cannot take them
  along); what W waits for is ours: `deps_key(W)`, the ids of the jobs it still waits for, and
  for each of them `waiters_key(dep)`, W -> its policy and BullMQ queue key.

  attach(w, wkey, qk, spec, owner): in the create of W (create.lua), on the branch that made it:
  `spec` is its policy and the ids, joined by \31. Each must be a job of `owner`'s: unfinished,
  it is waited for; completed, it counts as done; ended otherwise (or gone, or another user's),
  W fails in advance (BullMQ's deferred failure, `defa`: handed out, it ends failed, unrun)
  unless its policy is 'ignore'. With nothing left to wait for, W moves to wait.

  release(dep, w, how, completed, why): `dep` ended (finish.lua) and W waited for it.
  forget(w): W ended: what it still waited for no longer names it.

  `to_wait` is BullMQ's moveParentToWait without a delay (a job with `after` has none).
]]
--- @include "split"
local function to_wait(qk, wkey, w)
  if not redis.call('ZSCORE', qk .. ':waiting-children', w) then return end
  redis.call('ZREM', qk .. ':waiting-children', w)
  local priority = tonumber(redis.call('HGET', wkey, 'priority')) or 0
  local meta = redis.call('HMGET', qk .. ':meta', 'paused', 'concurrency')
  local held = meta[1] and true or false
  if not held and meta[2] then held = redis.call('LLEN', qk .. ':active') >= tonumber(meta[2]) end
  if priority == 0 then
    redis.call('RPUSH', qk .. ':wait', w)
  else
    local n = redis.call('INCR', qk .. ':pc')
    redis.call('ZADD', qk .. ':prioritized', priority * 0x100000000 + n % 0x100000000, w)
  end
  if not held then redis.call('ZADD', qk .. ':marker', 0, '0') end
  redis.call('XADD', qk .. ':events', '*', 'event', 'waiting', 'jobId', w, 'prev', 'waiting-children')
end

local function attach(w, wkey, qk, spec, owner)
  local parts = split(spec)
  local policy = parts[1]
  local how = policy .. '\31' .. qk
  local failed
  for i = 2, #parts do
    local dep = parts[i]
    local rec = redis.call('HMGET', job_key(dep), 'status', 'userId')
    if rec[1] and rec[2] == owner and not FINAL[rec[1]] then
      redis.call('SADD', deps_key(w), dep)
      redis.call('HSET', waiters_key(dep), w, how)
    elseif not (rec[1] == COMPLETED and rec[2] == owner) and policy ~= 'ignore' then
      failed = failed or ('job ' .. dep .. ' ' .. ((rec[2] == owner and rec[1]) or 'is gone'))
    end
  end
  if failed then
    redis.call('HSET', wkey, 'defa', failed)
    to_wait(qk, wkey, w)
  elseif redis.call('SCARD', deps_key(w)) == 0 then
    to_wait(qk, wkey, w)
  end
end

local function release(dep, w, how, completed, why)
  if redis.call('SREM', deps_key(w), dep) == 0 then return end  -- released already, or W ended
  local sep = string.find(how, '\31', 1, true)
  local policy, qk = string.sub(how, 1, sep - 1), string.sub(how, sep + 1)
  local wkey = qk .. ':' .. w
  if redis.call('EXISTS', wkey) == 0 then return end
  if completed or policy == 'ignore' then
    if redis.call('SCARD', deps_key(w)) == 0 then to_wait(qk, wkey, w) end
  elseif redis.call('ZSCORE', qk .. ':waiting-children', w) then
    redis.call('HSET', wkey, 'defa', why)
    to_wait(qk, wkey, w)
  end
end

local function forget(w)
  for _, dep in ipairs(redis.call('SMEMBERS', deps_key(w))) do
    redis.call('HDEL', waiters_key(dep), w)
  end
  redis.call('DEL', deps_key(w))
end
