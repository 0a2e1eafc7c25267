--[[
  Aging: the waiting jobs of a priority level that have waited since before a cutoff move up one
  level, to its front (before every job waiting there, in the order they had), so a low-priority
  job waits behind newer higher-priority work for a bounded time only. A job waits from when it
  was made or its delay ended, or (retried) from its last start. BullMQ's `priority` field says
  the new level; fair share's delay on it (`fairPen` of our record) is dropped.

  Input:
    KEYS[1] prioritized  BullMQ's prioritized set of the queue

    ARGV[1] bull_prefix  BullMQ's key prefix of the queue's jobs (`bull:<queue>:`)
    ARGV[2] level        the level whose jobs age (they go to level - 1)
    ARGV[3] cutoff_ms    a job waiting since this or before has waited long enough
    ARGV[4] most         how many of the level's first jobs are looked at

  Output:
    how many moved
]]
--- @include "includes/keys"
local LEVEL = 4294967296
local from = tonumber(A_level)
local to = from - 1
local base = from * LEVEL
local rows = redis.call('ZRANGEBYSCORE', K_prioritized, base, base + LEVEL - 1, 'WITHSCORES', 'LIMIT', 0, tonumber(A_most))
local due = {}
for i = 1, #rows, 2 do
  local t = redis.call('HMGET', A_bull_prefix .. rows[i], 'timestamp', 'delay', 'processedOn')
  local made = tonumber(t[1] or '')
  if made then
    local since = math.max(made + (tonumber(t[2] or '0') or 0), tonumber(t[3] or '0') or 0)
    if since <= tonumber(A_cutoff_ms) then due[#due + 1] = rows[i] end
  end
end
if #due == 0 then return 0 end
local tbase = to * LEVEL
local head = redis.call('ZRANGEBYSCORE', K_prioritized, tbase, tbase + LEVEL - 1, 'WITHSCORES', 'LIMIT', 0, 1)
local v = 0
if #head > 0 then v = tonumber(head[2]) - tbase end
for i = #due, 1, -1 do  -- from the last, each just before the one placed before it
  v = math.max(0, v - 1 / 1024)
  redis.call('ZADD', K_prioritized, string.format('%.17g', tbase + v), due[i])
  redis.call('HSET', A_bull_prefix .. due[i], 'priority', to)
  redis.call('HDEL', job_key(due[i]), 'fairPen')
end
return #due
