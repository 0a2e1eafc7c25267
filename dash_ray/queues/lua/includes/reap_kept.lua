--[[
  reap_kept(now_ms): what a user keeps in Redis (`K_sizes`: job -> bytes charged; `K_kept`: job
  -> when its records expire, ms; `K_usage`: user -> bytes, for all users): release what has
  expired by `now_ms`.

  Uses KEYS usage, sizes, kept; ARGV user.
]]
local function reap_kept(now_ms)
  local gone = redis.call('ZRANGEBYSCORE', K_kept, '-inf', now_ms, 'LIMIT', 0, 500)
  if #gone == 0 then return end
  local freed = 0
  for _, id in ipairs(gone) do
    freed = freed + tonumber(redis.call('HGET', K_sizes, id) or '0')
  end
  redis.call('HDEL', K_sizes, unpack(gone))
  redis.call('ZREM', K_kept, unpack(gone))
  if redis.call('ZINCRBY', K_usage, -freed, A_user) + 0 <= 0 then redis.call('ZREM', K_usage, A_user) end
end
