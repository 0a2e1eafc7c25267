--[[
  level_head(prioritized, level, n): the base score of a priority level (BullMQ scores a
  prioritized job priority * 2^32 + a counter) and its first `n` waiting jobs with their scores.
]]
local function level_head(prioritized, level, n)
  local base = tonumber(level) * 4294967296
  return base, redis.call('ZRANGEBYSCORE', prioritized, base, base + 4294967295, 'WITHSCORES', 'LIMIT', 0, n)
end
