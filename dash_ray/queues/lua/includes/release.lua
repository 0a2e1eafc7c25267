--[[
  release(dep, parent, how, completed, value, why, now_ms): a job that another waits for
  (`options.after`) has ended; `dep` is its BullMQ key, `parent` the waiting job's, `how` what
  after.lua recorded: its policy, queue key and id, joined by \31. BullMQ's flow layout, as
  moveToFinished treats a child: completed, it moves from the parent's `dependencies` to
  `processed` (with its return value); not, the parent either fails in advance (`defa`, BullMQ's
  deferred failure: it is handed out and ends failed, unrun; what else it waited for is
  forgotten, so a retry of it runs it) or, with policy 'ignore', notes it
  in `failed` and goes on. The parent moves to wait when nothing it waits for is left
  (`to_wait`: BullMQ's moveParentToWait, without a delay: a job with `after` has none).
]]
local function to_wait(qk, pkey, pid)
  if not redis.call('ZSCORE', qk .. ':waiting-children', pid) then return end
  redis.call('ZREM', qk .. ':waiting-children', pid)
  local priority = tonumber(redis.call('HGET', pkey, 'priority')) or 0
  local meta = redis.call('HMGET', qk .. ':meta', 'paused', 'concurrency')
  local held = meta[1] and true or false
  if not held and meta[2] then held = redis.call('LLEN', qk .. ':active') >= tonumber(meta[2]) end
  if priority == 0 then
    redis.call('RPUSH', qk .. ':wait', pid)
  else
    local n = redis.call('INCR', qk .. ':pc')
    redis.call('ZADD', qk .. ':prioritized', priority * 0x100000000 + n % 0x100000000, pid)
  end
  if not held then redis.call('ZADD', qk .. ':marker', 0, '0') end
  redis.call('XADD', qk .. ':events', '*', 'event', 'waiting', 'jobId', pid, 'prev', 'waiting-children')
end

local function release(dep, pkey, how, completed, value, why)
  local sep = string.find(how, '\31', 1, true)
  local sep2 = string.find(how, '\31', sep + 1, true)
  local policy, qk, pid = string.sub(how, 1, sep - 1), string.sub(how, sep + 1, sep2 - 1), string.sub(how, sep2 + 1)
  if redis.call('SREM', pkey .. ':dependencies', dep) == 0 then return end  -- released already, or gone
  if completed then
    redis.call('HSET', pkey .. ':processed', dep, value)
  elseif policy == 'ignore' then
    redis.call('HSET', pkey .. ':failed', dep, why)
  else  -- it waits no longer (a retry of it by its owner runs it, whatever the rest did)
    redis.call('HSET', pkey, 'defa', why)
    redis.call('DEL', pkey .. ':dependencies')
    to_wait(qk, pkey, pid)
    return
  end
  if redis.call('SCARD', pkey .. ':dependencies') == 0 then to_wait(qk, pkey, pid) end
end
