--[[
  Admit jobs just taken to their owners' GPU shares (queues/shares.py). A job's owner, and the
  group its job was submitted for, may each hold at most their cap of GPU share at once (a
  budget's `gpuShare`, in GPUs; else the default given here). A job that fits is counted: `held`
  names it with what it holds, the attempt's lock token and whose share it takes, and `holding`
  sums each one's. A job that does not fit, while its owner (or group) holds some already, is
  parked: its lock given up, out of BullMQ's `active` into `waiting-children` (where a job that
  waits for others waits too), marked (`parked` in our record: whose share it waits for) and
  named in `parked_key(who)` until a job of theirs ends (unhold.lua). A job counted already
  (taken again after a stall, or a retry taken again at once) stays counted once, under its new
  token. A job with no owner has no cap.

  Input:
    KEYS[1] held              this queue's counted jobs: job -> `<milli>\31<token>\31<who>[\31<who>]`
    KEYS[2] holding           user or org:<group> -> milli-GPUs held now
    KEYS[3] budgets           user or org:<group> -> budget JSON (its `gpuShare`)
    KEYS[4] parkers           the users and groups with parked jobs
    KEYS[5] active            BullMQ's active list of the queue
    KEYS[6] stalled           BullMQ's stalled set of the queue
    KEYS[7] waiting_children  BullMQ's waiting-children set of the queue

    ARGV[1] share       milli-GPUs a job of this queue holds
    ARGV[2] user_cap    milli-GPUs a user without a share of their own may hold ('' : no limit)
    ARGV[3] org_cap     the same for a group
    ARGV[4] now_ms
    ARGV[5] job_prefix  `<prefix>:<queue>:`: a job's BullMQ hash (`:lock`: its lock)
    ARGV[6...]          (job, lock token, owner, group or '') quadruples

  Output:
    {job, who, ...}: the jobs parked, each with the user or group whose share is full
]]
--- @include "includes/keys"
local share = tonumber(A_share)
local caps = {}
local function cap_of(who)
  if caps[who] == nil then
    local cap
    local raw = redis.call('HGET', K_budgets, who)
    if raw then
      local ok, b = pcall(cjson.decode, raw)
      if ok and type(b) == 'table' and tonumber(b.gpuShare) then cap = tonumber(b.gpuShare) * 1000 end
    end
    if not cap then  -- none of their own: the default (a budget that sets other limits keeps it)
      local default = string.sub(who, 1, 4) == 'org:' and A_org_cap or A_user_cap
      cap = default ~= '' and tonumber(default) or false
    end
    caps[who] = cap
  end
  return caps[who]
end

local function park(id, token, who)
  local jk = A_job_prefix .. id
  if redis.call('GET', jk .. ':lock') ~= token then return false end  -- not ours any more
  if redis.call('EXISTS', job_key(id)) == 0 then return false end  -- no record of ours (yet): it runs
  if redis.call('LREM', K_active, 1, id) == 0 then return false end
  redis.call('DEL', jk .. ':lock')
  redis.call('SREM', K_stalled, id)
  redis.call('ZADD', K_waiting_children, tonumber(A_now_ms), id)
  redis.call('HSET', job_key(id), 'parked', who)
  redis.call('ZADD', parked_key(who), tonumber(A_now_ms), A_job_prefix .. '\31' .. id)
  redis.call('SADD', K_parkers, who)
  return true
end

local out = {}
for i = 6, #ARGV, 4 do
  local id, token, owner, org = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local counted = redis.call('HGET', K_held, id)
  if counted then  -- counted once already: the attempt holding it now is this one
    local sep = string.find(counted, '\31', 1, true)
    local rest = string.sub(counted, string.find(counted, '\31', sep + 1, true) or #counted + 1)
    redis.call('HSET', K_held, id, string.sub(counted, 1, sep) .. token .. rest)
  elseif owner ~= '' then
    local whos = {owner}
    if org ~= '' then whos[2] = 'org:' .. org end
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
      redis.call('HSET', K_held, id, A_share .. '\31' .. token .. '\31' .. table.concat(whos, '\31'))
      for _, who in ipairs(whos) do redis.call('HINCRBY', K_holding, who, share) end
    end
  end
end
return out
