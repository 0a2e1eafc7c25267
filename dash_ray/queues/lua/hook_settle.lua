--[[
  The send of `body` under the claim `token` ended. Nothing happens unless that claim still
  holds the delivery. `due_ms` = '' : done (delivered, or given up with `dead` recorded); else
  try again at due_ms (`uncount` = '1': the claim is given back unsent, its try not counted).
  When the body was replaced meanwhile (a newer latest progress), the newer one is due now, with
  its tries counted afresh.

  Input:
    KEYS[1] hooks    deliveries by when they are due (ms)
    KEYS[2] bodies   delivery -> the event frame to send
    KEYS[3] tries    delivery -> attempts made[:token]
    KEYS[4] dead     deliveries given up

    ARGV[1] id       the delivery
    ARGV[2] token    its claim's
    ARGV[3] body     the frame sent
    ARGV[4] due_ms   when to try again ('' : done)
    ARGV[5] dead     the record of a delivery given up ('' for none)
    ARGV[6] uncount  '1': this try is not counted

  Output:
    1: settled as asked; 0: the body was replaced (the newer one is due now); -1: not this
    claim's any more
]]
local held = redis.call('HGET', K_tries, A_id)
local tries, token = string.match(held or '', '^(%d+):(.*)$')
if token ~= A_token then
  return -1
end
if redis.call('HGET', K_bodies, A_id) ~= A_body then
  if redis.call('HEXISTS', K_bodies, A_id) == 1 then
    redis.call('HDEL', K_tries, A_id)
    redis.call('ZADD', K_hooks, 0, A_id)
  end
  return 0
end
if A_due_ms ~= '' then
  tries = tonumber(tries)
  if A_uncount == '1' then tries = tries - 1 end
  if tries > 0 then redis.call('HSET', K_tries, A_id, tries) else redis.call('HDEL', K_tries, A_id) end
  redis.call('ZADD', K_hooks, 'XX', tonumber(A_due_ms), A_id)
  return 1
end
redis.call('HDEL', K_bodies, A_id)
redis.call('HDEL', K_tries, A_id)
redis.call('ZREM', K_hooks, A_id)
if A_dead ~= '' then
  redis.call('LPUSH', K_dead, A_dead)
  redis.call('LTRIM', K_dead, 0, DEAD_MAX - 1)
end
return 1
