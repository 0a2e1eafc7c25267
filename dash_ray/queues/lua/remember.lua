--[[
  Fair share's memory of one user in one queue (create.lua reads it): the work they were served
  lately, in jobs' worth, as of a time: what it held, decayed to now with the half-life, plus the
  work just charged, at most 100 jobs' worth.

  Input:
    KEYS[1] fair_usage  the queue's memory: user -> `<turns> <ms>`

    ARGV[1] user
    ARGV[2] turns         the work just charged (jobs' worth)
    ARGV[3] now_ms
    ARGV[4] half_life_ms

  Output:
    1
]]
local raw = redis.call('HGET', K_fair_usage, A_user)
local now = tonumber(A_now_ms)
local served = 0
if raw then
  local sp = string.find(raw, ' ', 1, true)
  local age = math.max(0, now - tonumber(string.sub(raw, sp + 1)))
  served = tonumber(string.sub(raw, 1, sp - 1)) * 2 ^ (-age / tonumber(A_half_life_ms))
end
-- at most 100 jobs' worth remembered: a user's delay behind a newcomer is bounded, whatever they ran
redis.call('HSET', K_fair_usage, A_user, string.format('%.17g %d', math.min(served + tonumber(A_turns), 100), now))
return 1
