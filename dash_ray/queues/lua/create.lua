--[[
  Create a new job, whole, in one script: BullMQ's add (its own script, run as the function
  `bull_add` over the KEYS and ARGV that come before these; see `with_bull_add` in lua.py), then
  the job's record, its user's history entry and open set, and its `waiting` / `delayed` event.
  No half-created job can exist: a failure anywhere before the script runs creates nothing. No
  record is ever made for a BullMQ job that someone else created.

  Input:
    KEYS[1]  job          our record of the job (hash)
    KEYS[2]  events       its replay stream
    KEYS[3]  finished     its queue's finished jobs
    KEYS[4]  open         its owner's unfinished jobs
    KEYS[5]  history      its owner's jobs
    KEYS[6]  history_n    the counter behind `history`
    KEYS[7]  wait         BullMQ's wait list of its queue
    KEYS[8]  prioritized  BullMQ's prioritized set of its queue
    KEYS[9]  bull_job     BullMQ's job hash
    KEYS[10] recent       every user's jobs (the admins' list)
    KEYS[11] recent_n     the counter behind `recent`
    KEYS[12] hooks        the webhook outbox: deliveries due
    KEYS[13] hook_bodies  the webhook outbox: their bodies
    KEYS[14] fair         its queue's fair-share clocks
    KEYS[15] pc           BullMQ's priority counter of its queue
    KEYS[16] usage        bytes each user keeps
    KEYS[17] sizes        its owner's job -> bytes charged
    KEYS[18] kept         its owner's job -> when its records expire
    KEYS[19] rate         its owner's submission times (the rate limit's window)
    KEYS[20] start_by     its queue's jobs with a deadline to start, by deadline (ms)
    KEYS[21] cache        its owner's job of this repeatable payload (used only with ARGV cache)
    KEYS[22] fair_usage   its queue's fair-share memory: user -> work served lately (`<turns> <ms>`)

    ARGV[1]  channel      its live channel
    ARGV[2]  frame        the `waiting` / `delayed` event, without its closing brace
    ARGV[3]  fields       the state fields of the record (key, value, ... joined by \31), its
                          payload's `digest` (a record has one; an adopted job's has none) and
                          `high` among them
    ARGV[4]  job_id
    ARGV[5]  position     '1': the frame shows the queue position
    ARGV[6]  fair_level   its priority
    ARGV[7]  fair_user    whose turn it takes
    ARGV[8]  fair_inc     1 / its owner's weight ('' : FIFO, no fair share)
    ARGV[9]  user         its owner ('_' for none)
    ARGV[10] now_ms
    ARGV[11] bytes        what it is charged
    ARGV[12] max_bytes    limits ('' for none)
    ARGV[13] max_open
    ARGV[14] high         '1': it counts as high priority
    ARGV[15] max_high
    ARGV[16] rate_limit      at most this many submissions ('' for none: counted before)
    ARGV[17] rate_window_ms  in any window this long
    ARGV[18] start_by     its deadline to start, ms ('' for none; '+<ms>': that long from now, on
                          Redis's clock): the record's `startBy`
    ARGV[19] nonce        this call's own random mark (also in the fields, the record's
                          `made`): what tells this create sent again (its reply lost with its
                          connection) from any other submit of the id
    ARGV[20] feed         the channel every new job's first event is also published on (the
                          sockets' `scope: mine` feed)
    ARGV[21] cache        '1': a repeatable submit that may be answered by the same user's run of
                          the same payload (KEYS cache): completed, it answers at once; unfinished,
                          this job follows it (no run of its own: it ends as that one ends)
    ARGV[22] data         the payload's JSON, kept in the record of a job that follows another
    ARGV[23] after        '' or what it waits for (`options.after`): its policy and the ids, joined
                          by \31 (BullMQ's add is then addParentJob: includes/after `attach`)
    ARGV[24] half_life_ms fair share's memory: the half-life of the work a user was served ('': none)

  Output:
    {seq, position}: created, its event's seq and queue position (-1: none)
    {0, -1, queue, digest, status, owner}: a job with this id has a record (an adopted job's has
                                           no digest); nothing changed
    {0, -1, '', '', '', ''}: BullMQ holds the id without a record (another producer's job, or
                             its record expired first)
    {0, -2, what, limit[, used]}: refused by its owner's limits; nothing written
    {0, -2, 'rate', limit, ms}: over its owner's submission rate; a place frees in ms
    {0, -3, id}: the owner's completed job `id` ran this payload: nothing made (cached)
    {seq, -1, id}: created, following the owner's unfinished job `id` (not added to BullMQ)
]]
--- @include "includes/keys"
--- @include "includes/final"
--- @include "includes/emit"
--- @include "includes/queue_position"
--- @include "includes/refusal"
--- @include "includes/charge"
--- @include "includes/live_again"
--- @include "includes/append_capped"
--- @include "includes/level_head"
--- @include "includes/rate_take"
--- @include "includes/after"

-- Fair share within a priority (start-time fair queuing): BullMQ scores a prioritized job
-- priority * 2^32 + a counter; ours replace the counter with a virtual start time. A user's
-- next job starts at max(where their last one ended, the level's head: the next job to be
-- served), and ends 1/weight later. So a user with 500 jobs waiting and one who comes along
-- with 1 alternate, a user of weight 2 gets two turns for one, a user back from idle gets no
-- credit, and FIFO holds within a user. When the level has nothing waiting, a job starts at the
-- latest end given (`last:`): as in SFQ, an idle level owes nobody a turn, so every clock then
-- is at or below the floor (and fair_prune forgets it). BullMQ's counter (`pc`) is moved past
-- every end given, so jobs BullMQ scores itself (retried, promoted from delayed, added by plain
-- BullMQ with a priority) go to the back of their level, as in BullMQ.
--
-- With a memory (A_half_life_ms), a user's job starts later by the work they were served lately
-- (K_fair_usage: jobs' worth, decayed with the half-life) over their weight: a user back from a
-- burst starts after a newcomer, however their backlog drained in between. The job's record
-- keeps that delay (`fairPen`), so the floor a later job starts from is the head's without it.
local function penalty()
  if A_half_life_ms == '' then return 0 end
  local raw = redis.call('HGET', K_fair_usage, A_fair_user)
  if not raw then return 0 end
  local sp = string.find(raw, ' ', 1, true)
  local served, at = tonumber(string.sub(raw, 1, sp - 1)), tonumber(string.sub(raw, sp + 1))
  local pen = served * 2 ^ (-math.max(0, tonumber(A_now_ms) - at) / tonumber(A_half_life_ms)) * tonumber(A_fair_inc)
  if pen < 1 / 1024 then return 0 end
  return pen
end

local function fair_share()
  local base, head = level_head(K_prioritized, A_fair_level, 2)
  local lastKey = 'last:' .. A_fair_level
  local floor
  for i = 1, #head, 2 do
    if head[i] ~= A_job_id then  -- just after the head (a tie would be broken by job id)
      local pen = 0
      if A_half_life_ms ~= '' then pen = tonumber(redis.call('HGET', job_key(head[i]), 'fairPen') or '0') end
      floor = tonumber(head[i + 1]) - base - pen + 1 / 1024
      break
    end
  end
  local userKey = 'u:' .. A_fair_level .. ':' .. A_fair_user
  local clocks = redis.call('HMGET', K_fair, lastKey, userKey)
  local last = tonumber(clocks[1] or '0')
  if not floor then floor = last end
  local pen = penalty()
  local v = math.max(tonumber(clocks[2] or '0'), floor + pen)
  local fin = v + tonumber(A_fair_inc)
  local finText = string.format('%.17g', fin)
  if pen > 0 then redis.call('HSET', K_job, 'fairPen', string.format('%.17g', pen)) end
  if fin - pen > last then
    redis.call('HSET', K_fair, userKey, finText, lastKey, string.format('%.17g', fin - pen))
  else
    redis.call('HSET', K_fair, userKey, finText)
  end
  redis.call('ZADD', K_prioritized, string.format('%.17g', base + (v % 4294967296)), A_job_id)
  -- (not past its delay: a job BullMQ scores itself, for any user, is not put behind it)
  if tonumber(redis.call('GET', K_pc) or '0') < fin - pen + 1 then
    redis.call('SET', K_pc, string.format('%d', math.floor(fin - pen) + 1))
  end
end

local cur = redis.call('HMGET', K_job, 'queue', 'digest', 'status', 'userId', 'made', 'seq')
-- This very call, sent again after its connection dropped before the reply: it made the job; it
-- answers so again, and counts nothing twice.
if cur[5] == A_nonce then return {tonumber(cur[6]) or 1, -1} end
-- Every submission counts against the rate, a replay of a known id too (as it did when the
-- gateway counted it before the store).
local wait_ms = rate_take()
if wait_ms then return {0, -2, 'rate', A_rate_limit, wait_ms} end
-- Any record holds its id: ours (with a digest), or one made for another producer's job (adopted,
-- or started by a take before its adoption), which must not pass to a new owner with its events.
if cur[1] or cur[2] then return {0, -1, cur[1] or '', cur[2] or '', cur[3] or '', cur[4] or ''} end
if redis.call('EXISTS', K_bull_job) == 1 then return {0, -1, '', '', '', ''} end
-- A repeatable payload the owner ran before: its result, or (still running) its run to follow.
local leader
if A_cache ~= '' then
  local hit = redis.call('GET', K_cache)
  if hit and hit ~= A_job_id then
    local was = redis.call('HMGET', job_key(hit), 'status', 'userId')
    if was[2] == A_user and was[1] == COMPLETED then return {0, -3, hit} end
    if was[2] == A_user and was[1] and not FINAL[was[1]] then leader = hit end
  end
end
-- The owner's limits, checked and taken here, in the script that creates the job: concurrent
-- submits cannot both pass a check that only one of them fits.
local refused = refusal(A_high == '1', true)
if refused then return refused end
if leader then  -- no run of its own: its record, events and history, ended with its leader's
  redis.call('SADD', followers_key(leader), A_job_id)
  redis.call('HSET', K_job, 'follows', leader, 'data', A_data)
else
  local added = bull_add()
  if type(added) == 'number' and added < 0 then
    return redis.error_reply('BullMQ refused job ' .. A_job_id .. ': code ' .. added)
  end
  if A_after ~= '' then  -- it waits in `waiting-children` (or, nothing left to wait for, goes on)
    attach(A_job_id, K_bull_job, string.sub(K_bull_job, 1, #K_bull_job - #A_job_id - 1), A_after, A_user)
  end
  if A_fair_inc ~= '' and redis.call('ZSCORE', K_prioritized, A_job_id) then fair_share() end
  if A_cache ~= '' then  -- identical submits follow it until it ends; then, completed, answer with it
    redis.call('SET', K_cache, A_job_id)
    redis.call('HSET', K_job, 'cacheKey', K_cache)
  end
end
charge()
redis.call('ZADD', K_kept, 'inf', A_job_id)  -- kept until it is final and its records expire
if A_start_by ~= '' and not leader then
  local start_by = A_start_by
  if string.sub(start_by, 1, 1) == '+' then
    local t = redis.call('TIME')
    start_by = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(string.sub(start_by, 2)))
  end
  redis.call('HSET', K_job, 'startBy', start_by)
  redis.call('ZADD', K_start_by, start_by, A_job_id)
end
append_capped(K_history, K_history_n, A_job_id, HISTORY_MAX)
append_capped(K_recent, K_recent_n, A_job_id, RECENT_MAX)
live_again()
local pos = -1
if A_position == '1' and not leader then pos = queue_position(K_wait, K_prioritized, A_job_id) end
local seq = emit(pos)
redis.call('PUBLISH', A_feed, emitted)
if leader then return {seq, -1, leader} end
return {seq, pos}
