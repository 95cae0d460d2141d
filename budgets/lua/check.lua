-- The pre-flight check, atomically: emergency stop, rate limits, budgets, and the reservation.
-- ARGV is built by budgets.check_script.script_args (the one place), the reply read by
-- budgets.check_script.decode_reply. No KEYS: the keys are read from ARGV in order (all of one
-- tenant's keys share the hash tag `{<tenant>}`, the global stop key excepted).
--
-- ARGV, in order (ms: milliseconds; nano-USD: integer nano-dollars):
--   1  now                  epoch ms, the app's clock (stops and windows are compared with it)
--   2  tenant stop key      cm:{<tenant>}:estop, value "<expiry epoch ms>|<reason>"
--   3  global stop key      cm:global:estop, same value
--   4  trusted key          cm:{<tenant>}:ok, present once the counters are rebuilt
--   5  n_rl                 how many rate limits follow
--   6  estimate tokens      input + output, counted by token limits
--   then n_rl times, one per rate limit:
--      prefix               cm:{<tenant>}:rl:<limit id>:<caller>; windows at <prefix>:q:<n>
--                           (requests) and <prefix>:t:<n> (tokens)
--      window               ms
--      max requests         -1: none
--      max tokens           -1: none
--   then:
--      reserve              '1' to hold the estimate on every hard budget, else '0'
--      reservation id       read only to reserve
--      estimate             nano-USD
--      reservation expiry   epoch ms
--      reservation ttl      ms, of the hold keys
--      tenant prefix        cm:{<tenant>}
--      event id             '' for none: a usage event with it settles the reservation
--      n_b                  how many budgets follow
--   then n_b times, one per budget:
--      limit                nano-USD
--      hard                 '1' / '0'
--      counter field        the field of the hashes below (t, u:<end user>, m:<model>, ...)
--      hold key             cm:{<tenant>}:r:<hold name>: a sorted set of "<res id>:<amount>"
--                           scored by expiry, with its total at <hold key>:sum
--      n_buckets            then n_buckets counter hash keys, summed
--
-- Reply {outcome, ...}; outcome is one of (budgets.check_script.Outcome, same numbers):
--   0 ALLOWED       {0, reserved (1/0), spent_1, reserved_1, ..., spent_n, reserved_n,
--                    [the tightest request limit: index, limit, used * 1000, window ms,
--                    ms into the window]}
--   1 STOPPED       {1, stop value, spent_1, reserved_1, ...}; no figures when the counters
--                   are not trusted
--   2 RATE_LIMITED  {2, index (1-based), 'requests'|'tokens', limit, used * 1000, window ms,
--                    ms into the window, the previous window's count}
--   3 OVER_BUDGET   {3, 0, spent_1, reserved_1, ...}
--   4 UNTRUSTED     {4}: the counters are not rebuilt since Redis started; ask PostgreSQL
-- spent_i, reserved_i: nano-USD of budget i (reserved: held by other calls, this one not
-- included). Only ALLOWED counts the call in the rate-limit windows and adds the holds;
-- every outcome that reads the budgets (ALLOWED, OVER_BUDGET, a trusted STOPPED) first drops
-- their expired holds.
local ALLOWED, STOPPED, RATE_LIMITED, OVER_BUDGET, UNTRUSTED = 0, 1, 2, 3, 4

local now = tonumber(ARGV[1])
local i = 2
local function arg() local v = ARGV[i]; i = i + 1; return v end

-- 1. emergency stop, tenant's or global; the budgets' figures still come back with it
local stopped = nil
for s = 1, 2 do
  local stop = redis.call('GET', arg())
  if stop and stopped == nil and tonumber(string.match(stop, '^(%d+)|')) > now then
    stopped = stop
  end
end
if redis.call('EXISTS', arg()) == 0 then
  if stopped then return {STOPPED, stopped} end
  return {UNTRUSTED}
end

-- 2. rate limits: sliding window counters (the previous window weighted by its overlap)
local n_rl = tonumber(arg())
local est_tokens = tonumber(arg())
local rl = {}
local tightest = {}
if stopped then
  i = i + 4 * n_rl  -- a stopped call uses no rate limit
  n_rl = 0
end
for r = 1, n_rl do
  local prefix = arg(); local window = tonumber(arg())
  local max_req = tonumber(arg()); local max_tok = tonumber(arg())
  local idx = math.floor(now / window)
  local into = now - idx * window
  local weight = 1 - into / window
  local q = tonumber(redis.call('GET', prefix .. ':q:' .. idx) or '0')
  local pq = tonumber(redis.call('GET', prefix .. ':q:' .. (idx - 1)) or '0')
  local t = tonumber(redis.call('GET', prefix .. ':t:' .. idx) or '0')
  local pt = tonumber(redis.call('GET', prefix .. ':t:' .. (idx - 1)) or '0')
  local used_q = pq * weight + q
  local used_t = pt * weight + t
  if max_req >= 0 and used_q + 1 > max_req then
    return {RATE_LIMITED, r, 'requests', max_req, math.floor(used_q * 1000), window, into, pq}
  end
  if max_tok >= 0 and used_t + est_tokens > max_tok then
    return {RATE_LIMITED, r, 'tokens', max_tok, math.floor(used_t * 1000), window, into, pt}
  end
  rl[#rl + 1] = {prefix, idx, window}
  if max_req >= 0 then
    tightest[#tightest + 1] = {r, max_req, math.floor(used_q * 1000), window, into}
  end
end

-- 3. budgets
local reserve = arg() == '1'
local res_id = arg(); local estimate = tonumber(arg())
local expiry = tonumber(arg()); local res_ttl = tonumber(arg())
local prefix = arg(); local event_id = arg()
local n_b = tonumber(arg())
local out = {}
local denied = 0
local holds = {}
for b = 1, n_b do
  local limit = tonumber(arg()); local hard = arg() == '1'
  local field = arg(); local res_key = arg(); local n_days = tonumber(arg())
  local spent = 0
  for d = 1, n_days do spent = spent + tonumber(redis.call('HGET', arg(), field) or '0') end
  local expired = redis.call('ZRANGEBYSCORE', res_key, '-inf', now)
  if #expired > 0 then
    local gone = 0
    for _, member in ipairs(expired) do gone = gone + tonumber(string.match(member, ':(%d+)$')) end
    redis.call('ZREMRANGEBYSCORE', res_key, '-inf', now)
    redis.call('DECRBY', res_key .. ':sum', gone)
  end
  local reserved = tonumber(redis.call('GET', res_key .. ':sum') or '0')
  if reserved < 0 then reserved = 0 end
  if hard and (spent >= limit or spent + reserved + estimate > limit) then denied = 1 end
  out[#out + 1] = spent
  out[#out + 1] = reserved
  if hard then holds[#holds + 1] = res_key end
end
if stopped then
  table.insert(out, 1, stopped); table.insert(out, 1, STOPPED)
  return out
end
if denied == 1 then
  table.insert(out, 1, 0); table.insert(out, 1, OVER_BUDGET)
  return out
end
for _, s in ipairs(rl) do
  redis.call('INCR', s[1] .. ':q:' .. s[2])
  redis.call('PEXPIRE', s[1] .. ':q:' .. s[2], 2 * s[3])
  if est_tokens > 0 then
    redis.call('INCRBY', s[1] .. ':t:' .. s[2], est_tokens)
    redis.call('PEXPIRE', s[1] .. ':t:' .. s[2], 2 * s[3])
  end
end
local reserved_flag = 0
if reserve and #holds > 0 and estimate > 0 then
  local member = res_id .. ':' .. estimate
  for _, key in ipairs(holds) do
    redis.call('ZADD', key, expiry, member)
    redis.call('INCRBY', key .. ':sum', estimate)
    redis.call('PEXPIRE', key, res_ttl)
    redis.call('PEXPIRE', key .. ':sum', res_ttl)
  end
  redis.call('SET', prefix .. ':res:' .. res_id, estimate .. '|' .. table.concat(holds, '|'), 'PX', res_ttl)
  if event_id ~= '' then
    redis.call('SET', prefix .. ':resev:' .. event_id, res_id, 'PX', res_ttl)
  end
  reserved_flag = 1
end
table.insert(out, 1, reserved_flag); table.insert(out, 1, ALLOWED)
-- the tightest request limit, for the X-RateLimit headers
local best = nil
for _, t in ipairs(tightest) do
  if best == nil or (t[2] * 1000 - t[3]) < (best[2] * 1000 - best[3]) then best = t end
end
if best then
  out[#out + 1] = best[1]; out[#out + 1] = best[2]; out[#out + 1] = best[3]
  out[#out + 1] = best[4]; out[#out + 1] = best[5]
end
return out
