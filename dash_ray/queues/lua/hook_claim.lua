--[[
  Claim due webhook deliveries under a lease and a fresh token (see queues/outbox.py). A
  delivery's entry in `tries`: `{tries}` (settled, or from before claims were fenced) or
  `{tries}:{token}` (claimed under that token). A due delivery whose body is gone is dropped.

  Input:
    KEYS[1] hooks     deliveries by when they are due (ms)
    KEYS[2] bodies    delivery -> the event frame to send
    KEYS[3] tries     delivery -> attempts made[:token]

    ARGV[1] now_ms
    ARGV[2] lease_ms
    ARGV[3] n         deliveries to claim at most
    ARGV[4] token     this claim's

  Output:
    {id, body, tries, id, body, tries, ...}
]]
local ids = redis.call('ZRANGEBYSCORE', K_hooks, '-inf', A_now_ms, 'LIMIT', 0, tonumber(A_n))
local out = {}
for _, id in ipairs(ids) do
  local body = redis.call('HGET', K_bodies, id)
  if body then
    local tries = (tonumber(string.match(redis.call('HGET', K_tries, id) or '', '^%d+')) or 0) + 1
    redis.call('ZADD', K_hooks, tonumber(A_now_ms) + tonumber(A_lease_ms), id)
    redis.call('HSET', K_tries, id, tries .. ':' .. A_token)
    out[#out + 1] = id
    out[#out + 1] = body
    out[#out + 1] = tries
  else
    redis.call('ZREM', K_hooks, id)
  end
end
return out
