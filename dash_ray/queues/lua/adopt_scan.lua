--[[
  The jobs a plain BullMQ producer added to a queue since the last scan: BullMQ's `added` events
  after the cursor (at most `count`), less the jobs that have a record of ours (our own adds, and
  those adopted). Their records' keys are built here (`job_key`), since the ids come from the
  stream.

  Input:
    KEYS[1] bull_events  BullMQ's event stream of the queue
    KEYS[2] cursor       the last entry scanned

    ARGV[1] count        entries to read at most

  Output:
    {cursor, entries read, id, ...}
]]
--- @include "includes/keys"
local from = redis.call('GET', K_cursor) or '0'
local entries = redis.call('XRANGE', K_bull_events, '(' .. from, '+', 'COUNT', tonumber(A_count))
local out = {from, #entries}
for _, entry in ipairs(entries) do
  out[1] = entry[1]
  local f = entry[2]
  if f[1] == 'event' and f[2] == 'added' and f[3] == 'jobId' then
    local rec = job_key(f[4])
    if redis.call('HEXISTS', rec, 'digest') == 0 and redis.call('HEXISTS', rec, 'adopted') == 0 then
      out[#out + 1] = f[4]
    end
  end
end
if #entries > 0 then redis.call('SET', K_cursor, out[1]) end
return out
