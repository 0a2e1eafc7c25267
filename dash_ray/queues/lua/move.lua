--[[
  Move a waiting job within its queue, in one step. BullMQ takes the wait list first (from its
  right end), then prioritized jobs by score (priority * 2^32 + a place: fair share's virtual
  start time, or BullMQ's counter). A job's owner reorders only among their own places: their
  waiting jobs of that priority keep the same scores between them, so no other user's job moves.

  Input:
    KEYS[1] prioritized  BullMQ's prioritized set of its queue
    KEYS[2] wait         BullMQ's wait list of its queue
    KEYS[3] open         its owner's unfinished jobs
    KEYS[4] bull_job     BullMQ's job hash
    KEYS[5] pc           BullMQ's priority counter of its queue

    ARGV[1] job_id
    ARGV[2] how     'front': the front of the queue (before every job of every priority);
                    'own': the first of its owner's waiting jobs of its priority;
                    'before': just before ARGV[3], a waiting job of the same owner and priority;
                    'priority': the back of priority ARGV[3] (BullMQ's changePriority)
    ARGV[3] other   the job to go before, or the new priority

  Output:
    {1, position}: moved (its place in the queue now, 1 = next)
    {0}: it is not waiting (not in the wait list nor prioritized)
    {-1}: `other` is not a waiting job of the same owner and priority
    {-2}: a job in the wait list (a plain BullMQ job of priority 0) has no owner's places to take
]]
--- @include "includes/queue_position"
--- @include "includes/keys"
local LEVEL = 4294967296
local score = redis.call('ZSCORE', K_prioritized, A_job_id)
if not score then
  if not redis.call('LPOS', K_wait, A_job_id) then return {0} end
  if A_how == 'front' then
    redis.call('LREM', K_wait, 0, A_job_id)
    redis.call('RPUSH', K_wait, A_job_id)
  elseif A_how == 'priority' then
    redis.call('LREM', K_wait, 0, A_job_id)
    local n = redis.call('INCR', K_pc)
    redis.call('ZADD', K_prioritized, tonumber(A_other) * LEVEL + n % LEVEL, A_job_id)
    redis.call('HSET', K_bull_job, 'priority', A_other)
  else
    return {-2}
  end
  return {1, queue_position(K_wait, K_prioritized, A_job_id)}
end
score = tonumber(score)
if A_how == 'front' then
  local first = redis.call('ZRANGE', K_prioritized, 0, 0, 'WITHSCORES')
  if first[1] ~= A_job_id then
    redis.call('ZADD', K_prioritized, string.format('%.17g', tonumber(first[2]) - 1), A_job_id)
    redis.call('HDEL', job_key(A_job_id), 'fairPen')  -- (fair share's delay: no longer where it is)
  end
  return {1, queue_position(K_wait, K_prioritized, A_job_id)}
end
if A_how == 'priority' then
  local n = redis.call('INCR', K_pc)
  redis.call('ZADD', K_prioritized, tonumber(A_other) * LEVEL + n % LEVEL, A_job_id)
  redis.call('HSET', K_bull_job, 'priority', A_other)
  redis.call('HDEL', job_key(A_job_id), 'fairPen')
  return {1, queue_position(K_wait, K_prioritized, A_job_id)}
end
-- Its owner's places at its priority: their waiting jobs of that level, in the queue's order.
local level = math.floor(score / LEVEL)
local mine = {}
for _, id in ipairs(redis.call('SMEMBERS', K_open)) do
  local s = redis.call('ZSCORE', K_prioritized, id)
  if s and math.floor(tonumber(s) / LEVEL) == level then mine[#mine + 1] = {tonumber(s), id} end
end
table.sort(mine, function(a, b)
  if a[1] == b[1] then return a[2] < b[2] end
  return a[1] < b[1]
end)
local at, to
for i, e in ipairs(mine) do
  if e[2] == A_job_id then at = i end
  if A_how == 'before' and e[2] == A_other then to = i end
end
if A_how == 'own' then to = 1 end
if not at then return {0} end  -- not its owner's (the caller passed another's set)
if not to then return {-1} end
-- The same places, the order changed: the job leaves its place and goes before `to`.
local order = {}
for i, e in ipairs(mine) do
  if i ~= at then order[#order + 1] = e[2] end
end
if to > at then to = to - 1 end
table.insert(order, to, A_job_id)
for i, id in ipairs(order) do
  if id ~= mine[i][2] then
    redis.call('ZADD', K_prioritized, string.format('%.17g', mine[i][1]), id)
    redis.call('HDEL', job_key(id), 'fairPen')  -- (a place's delay was its job's, not the place's)
  end
end
return {1, queue_position(K_wait, K_prioritized, A_job_id)}
