--[[
  What a user keeps in Redis now (bytes, after releasing what expired) and how many of their
  jobs are unfinished.

  Input:
    KEYS[1] usage  bytes each user keeps
    KEYS[2] sizes  the user's job -> bytes charged
    KEYS[3] kept   the user's job -> when its records expire
    KEYS[4] open   the user's unfinished jobs

    ARGV[1] user
    ARGV[2] now_ms

  Output:
    {bytes, unfinished}
]]
--- @include "includes/reap_kept"
reap_kept(A_now_ms)
return {tonumber(redis.call('ZSCORE', K_usage, A_user) or '0'), redis.call('SCARD', K_open)}
