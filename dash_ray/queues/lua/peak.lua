--[[
  The usage ledger's peaks (queues/ledger.py): each field keeps the largest value it was given.

  Input:
    KEYS[1] ledger   one user's hour: `<queue>\31<model>\31<device>\31peakMemB` -> bytes

    ARGV[1...]       (field, value) pairs

  Output:
    1
]]
for i = 1, #ARGV, 2 do
  local v = tonumber(ARGV[i + 1])
  if v > (tonumber(redis.call('HGET', K_ledger, ARGV[i])) or -1) then redis.call('HSET', K_ledger, ARGV[i], ARGV[i + 1]) end
end
return 1
