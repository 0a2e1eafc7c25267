--[[
  split(s): the parts of `s` between its \31 separators, in order ('' : none).
]]
local function split(s)
  local parts, from = {}, 1
  if s == '' then return parts end
  while true do
    local i = string.find(s, '\31', from, true)
    if not i then
      parts[#parts + 1] = string.sub(s, from)
      return parts
    end
    parts[#parts + 1] = string.sub(s, from, i - 1)
    from = i + 1
  end
end
