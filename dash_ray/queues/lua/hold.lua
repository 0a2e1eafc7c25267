--[[
  Admit jobs just taken to their owners' GPU shares (queues/shares.py). A job's owner, and the
  group they are in, may each hold at most their cap of GPU share at once (a budget's
  `gpuShare`, in GPUs; else the default given here). A job that fits is counted: `held` names
  it with what it holds and whose share it takes, and `holding` sums each one's. A job that
  does not fit, while its owner (or group) holds some already, is parked: its lock given up,
  out of BullMQ's `active` into `waiting-children` (where it waits, as a job that waits for
  others does), and named in `parked_key(who)` until a job of theirs ends (unhold.lua). A job
  counted already (taken again after a stall) is admitted as it is; one with no owner has no cap.

  Input:
    KEYS[1] held              this queue's counted jobs: job -> `<milli>\31<who>[\31<who>]`
    KEYS[2] holding           user or org:<group> -> milli-GPUs held now
    KEYS[3] budgets           user or org:<group> -> budget JSON (its `gpuShare`)
    KEYS[4] orgs              user -> their group
    KEYS[5] active            BullMQ's active list of the queue
    KEYS[6] stalled           BullMQ's stalled set of the queue
    KEYS[7] waiting_children  BullMQ's waiting-children set of the queue

    ARGV[1] share       milli-GPUs a job of this queue holds
    ARGV[2] user_cap    milli-GPUs a user without a budget of their own may hold ('' : no limit)
    ARGV[3] org_cap     the same for a group
    ARGV[4] now_ms
    ARGV[5] job_prefix  `<prefix>:<queue>:`: a job's BullMQ hash (`:lock`: its lock)
    ARGV[6...]          (job, lock token, owner) triples

  Output:
    {job, who, ...}: the jobs parked, each with the user or group whose share is full
]]
--- @include "includes/keys"
local share = tonumber(A_share)
local caps = {}
local function cap_of(who)
  if caps[who] == nil then
    local cap = false
    local raw = redis.call('HGET', K_budgets, who)
    if raw then
      local ok, b = pcall(cjson.decode, raw)
      if ok and type(b) == 'table' and tonumber(b.gpuShare) then cap = tonumber(b.gpuShare) * 1000 end
    else
      local default = string.sub(who, 1, 4) == 'org:' and A_org_cap or A_user_cap
      if default ~= '' then cap = tonumber(default) end
    end
    caps[who] = cap
  end
  return caps[who]
end

local function park(id, token, who)
  local jk = A_job_prefix .. id
  if redis.call('GET', jk .. ':lock') ~= token then return false end  -- not ours any more
  if redis.call('LREM', K_active, 1, id) == 0 then return false end
  redis.call('DEL', jk .. ':lock')
  redis.call('SREM', K_stalled, id)
  redis.call('ZADD', K_waiting_children, tonumber(A_now_ms), id)
  redis.call('ZADD', parked_key(who), tonumber(A_now_ms), A_job_prefix .. '\31' .. id)
  return true
end

local out = {}
for i = 6, #ARGV, 3 do
  local id, token, owner = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if owner ~= '' and redis.call('HEXISTS', K_held, id) == 0 then
    local whos = {owner}
    local org = redis.call('HGET', K_orgs, owner)
    if org then whos[2] = 'org:' .. org end
    local full
    for _, who in ipairs(whos) do
      local cap = cap_of(who)
      local now = tonumber(redis.call('HGET', K_holding, who) or '0')
      if cap and now > 0 and now + share > cap then full = who; break end
    end
    if full then
      if park(id, token, full) then
        out[#out + 1] = id
        out[#out + 1] = full
      end
    else
      redis.call('HSET', K_held, id, A_share .. '\31' .. table.concat(whos, '\31'))
      for _, who in ipairs(whos) do redis.call('HINCRBY', K_holding, who, share) end
    end
  end
end
return out
