--[[
  refusal(high, charged): the owner's limits a job about to run must fit (create, reopen),
  checked in the script that then takes them: the unfinished-jobs cap, the high-priority share
  (for a `high` job), and, when it is to be `charged`, the bytes kept. Returns the refusal
  {0, -2, what, limit[, used]} or nil.

  Uses KEYS open, usage, sizes, kept; ARGV user, now_ms, bytes, max_bytes, max_open, max_high.
]]
--- @include "keys"
--- @include "reap_kept"
local function refusal(high, charged)
  if A_max_open ~= '' and redis.call('SCARD', K_open) >= tonumber(A_max_open) then
    return {0, -2, 'open', A_max_open}
  end
  if high and A_max_high ~= '' then
    local n = 0
    for _, id in ipairs(redis.call('SMEMBERS', K_open)) do
      if redis.call('HGET', job_key(id), 'high') == '1' then n = n + 1 end
    end
    if n >= tonumber(A_max_high) then return {0, -2, 'high', A_max_high} end
  end
  reap_kept(A_now_ms)
  if charged and A_max_bytes ~= '' then
    local used = tonumber(redis.call('ZSCORE', K_usage, A_user) or '0')
    if used + tonumber(A_bytes) > tonumber(A_max_bytes) then return {0, -2, 'bytes', A_max_bytes, used} end
  end
  return nil
end
