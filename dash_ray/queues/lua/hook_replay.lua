--[[
  Replay given-up webhook deliveries (queues/outbox.py `replay`): each named record of the dead
  list that is still there is taken out of it and its delivery put back in the outbox, due now
  with its tries counted afresh. A record replayed meanwhile (by another admin) is skipped, so a
  delivery is replayed once; a delivery the outbox holds already (a newer latest progress, being
  sent or due) is left as it is: it goes out anyway, and its claim is not disturbed.

  Input:
    KEYS[1] hooks    deliveries by when they are due (ms)
    KEYS[2] bodies   delivery -> the event frame to send
    KEYS[3] tries    delivery -> attempts made[:token]
    KEYS[4] dead     deliveries given up

    ARGV[1] now_ms
    ARGV[2...]       (record, delivery, body) triples: the dead list's record as stored, the
                     delivery's outbox id, its event frame

  Output:
    the positions (1-based, in the triples) of the records replayed
]]
local out = {}
for i = 2, #ARGV, 3 do
  if redis.call('LREM', K_dead, 1, ARGV[i]) == 1 then
    local id, body = ARGV[i + 1], ARGV[i + 2]
    if redis.call('HSETNX', K_bodies, id, body) == 1 then
      redis.call('HDEL', K_tries, id)
      redis.call('ZADD', K_hooks, tonumber(A_now_ms), id)
    end
    out[#out + 1] = (i + 1) / 3
  end
end
return out
