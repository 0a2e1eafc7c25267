--[[
  Forget the fair-share clocks that no longer matter. A user's clock at or below its level's
  floor gives them nothing: a job of theirs would start at the floor anyway. The floor is the
  level's head, or the latest end given (`last:`) when nothing waits, and never goes back: a fair
  job starts at or after it, a job BullMQ scores itself after `last`. So those fields go, and the
  hash holds only users whose next turn is ahead of the others' (none once the level idles).

  Input:
    KEYS[1] fair         the queue's fair-share clocks
    KEYS[2] prioritized  BullMQ's prioritized set of the queue

    ARGV[1] fields       field names of `fair` (from HSCAN), newline-separated

  Output:
    how many fields went
]]
--- @include "includes/level_head"
local floors, gone = {}, 0
for f in string.gmatch(A_fields, '[^\n]+') do
  local level = string.match(f, '^u:(%d+):')
  local v = level and tonumber(redis.call('HGET', K_fair, f) or '')
  if v then
    local floor = floors[level]
    if not floor then
      local base, head = level_head(K_prioritized, level, 1)
      if #head > 0 then floor = tonumber(head[2]) - base
      else floor = tonumber(redis.call('HGET', K_fair, 'last:' .. level) or '0') end
      floors[level] = floor
    end
    if v <= floor then
      redis.call('HDEL', K_fair, f)
      gone = gone + 1
    end
  end
end
return gone
