--[[
  fenced_out(status, lock, token): whether an attempt (`token`: its BullMQ lock token; '' for
  a write not bound to an attempt) may no longer write the job: the job is final (`status`), or
  another attempt holds its `lock`.
]]
--- @include "final"
local function fenced_out(status, lock, token)
  if FINAL[status] then return true end
  if token == '' then return false end
  local owner = redis.call('GET', lock)
  return owner and owner ~= token
end
