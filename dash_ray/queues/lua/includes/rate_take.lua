--[[
  rate_take(): count one more submission of the owner in their moving window (at most
  `rate_limit` in any `rate_window_ms`), in the script that does what it guards: a list of the
  times of their last `rate_limit` submissions, newest first. Returns nil once counted, else the
  ms until the oldest leaves the window (nothing written).

  Uses KEYS rate; ARGV rate_limit ('' for none), rate_window_ms, now_ms.
]]
local function rate_take()
  if A_rate_limit == '' then return nil end
  local limit = tonumber(A_rate_limit)
  local window = tonumber(A_rate_window_ms)
  local now = tonumber(A_now_ms)
  if limit < 1 then return window end  -- `0/minute`: no submissions at all
  local oldest = redis.call('LINDEX', K_rate, limit - 1)
  if oldest and tonumber(oldest) > now - window then
    -- at most the window: an entry stamped a little after `now` (a concurrent submit, its clock read
    -- a moment later, ran first) still frees within one window
    return math.min(window, math.max(1, tonumber(oldest) + window - now))
  end
  redis.call('LPUSH', K_rate, A_now_ms)
  redis.call('LTRIM', K_rate, 0, limit - 1)
  redis.call('PEXPIRE', K_rate, window)
  return nil
end
