--[[
  A read, not a transition: the next jobs a take would lock, in the order BullMQ's moveToActive
  hands them out (the tail of `wait` first, then `prioritized` by score), with their data; none
  while the queue is paused. The consumer reads it to take a batch of compatible jobs at the head.

  Input:
    KEYS[1] wait         BullMQ's wait list of its queue
    KEYS[2] prioritized  BullMQ's prioritized set of its queue
    KEYS[3] meta         BullMQ's meta hash of its queue

    ARGV[1] job_prefix   `{prefix}:{queue}:`, the prefix of its job hashes
    ARGV[2] count        how many to read

  Output:
    {id, data, id, data, ...}
]]
local n = tonumber(A_count)
local out = {}
if n < 1 or redis.call('HEXISTS', K_meta, 'paused') == 1 then return out end
local ids = redis.call('LRANGE', K_wait, -n, -1)
local taken = {}
for i = #ids, 1, -1 do taken[#taken + 1] = ids[i] end
if #taken < n then
  local more = redis.call('ZRANGE', K_prioritized, 0, n - #taken - 1)
  for i = 1, #more do taken[#taken + 1] = more[i] end
end
for i = 1, #taken do
  out[#out + 1] = taken[i]
  out[#out + 1] = redis.call('HGET', A_job_prefix .. taken[i], 'data') or ''
end
return out
