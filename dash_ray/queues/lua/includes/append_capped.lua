--[[
  append_capped(zset, counter, id, max): `id` last in a sorted set scored by its counter (a
  user's history, the admins' list); the oldest beyond `max` entries go.
]]
local function append_capped(zset, counter, id, max)
  redis.call('ZADD', zset, redis.call('INCR', counter), id)
  redis.call('ZREMRANGEBYRANK', zset, 0, -(max + 1))  -- ranks 0 .. card - max - 1: none when within max
end
