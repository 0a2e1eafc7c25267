--[[
  queue_position(wait, prioritized, id): the place of a waiting job in its queue (1 = next), or
  -1. BullMQ takes the wait list first (from its right end), then prioritized jobs by score.
]]
local function queue_position(wait, prioritized, id)
  local rank = redis.call('ZRANK', prioritized, id)
  local waitLen = redis.call('LLEN', wait)
  if rank then return waitLen + rank + 1 end
  local idx = redis.call('LPOS', wait, id, 'MAXLEN', 100000)
  if idx then return waitLen - idx end
  return -1
end
