--[[
  Count one submission (a retry, or a submit that is checked before its job is made) in its
  owner's moving window; `create` counts the others itself (`rate_take`).

  Input:
    KEYS[1] rate            the owner's submission times

    ARGV[1] rate_limit      at most this many
    ARGV[2] rate_window_ms  in any window this long
    ARGV[3] now_ms

  Output:
    {0}: counted
    {ms}: refused; a place frees in ms
]]
--- @include "includes/rate_take"
local wait_ms = rate_take()
if wait_ms then return {wait_ms} end
return {0}
