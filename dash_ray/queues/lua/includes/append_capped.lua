--[[
  append_capped(zset, counter, id, max): `id` last in a sorted set scored by its counter (a
  user's history, the admins' list); the oldest beyond `max` entries go.
]]
local function append_capped(zset, counter, id, max)
  redis.call('ZADD', zset, redis.call('INCR', counter), id)
  local over = redis.call('ZCARD', zset) - max
  if over > 0 then redis.call('ZREMRANGEBYRANK', zset, 0, over - 1) end
end
