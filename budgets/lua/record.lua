-- One ingest batch into the spend counters, at most once, and the reservations it settles.
-- Built by budgets.counters.apply_update. No KEYS (the keys are read from ARGV in order).
-- ARGV:
--   ttl (s) of the counter hashes,
--   marker key ('' for none: the update has no outbox row) and its ttl (s): set when applied,
--   and an update whose marker is already set changes no counter (it still settles),
--   the tenant's "counters trusted" key,
--   n_hashes, then per hash: key, "field\0amount\0..." (NUL-separated: ingest refuses NUL in
--   every name, and one long argument costs redis-py a fraction of what thousands of short
--   ones do),
--   the tenant prefix, "kind\0value\0..." for the reservations to settle (kind 'r': a
--   reservation id, 'e': an event id a reservation may carry).
-- Returns {applied (1: now, 0: before), reservations settled, counters trusted (1/0)}.
local ttl = tonumber(ARGV[1])
local marker, marker_ttl = ARGV[2], tonumber(ARGV[3])
local trusted = redis.call('EXISTS', ARGV[4])
local applied = 1
if marker ~= '' then
  if redis.call('SET', marker, 1, 'NX', 'EX', marker_ttl) == false then
    applied = 0
  end
end
local n_hashes = tonumber(ARGV[5])
local i = 6
for h = 1, n_hashes do
  if applied == 1 then
    local key = ARGV[i]
    for field, amount in string.gmatch(ARGV[i + 1], '([^%z]+)%z([^%z]+)%z') do
      redis.call('HINCRBY', key, field, amount)
    end
    redis.call('EXPIRE', key, ttl)
  end
  i = i + 2
end
-- The reservations are settled even when the counters were not changed (settling twice
-- changes nothing): a counter rebuild that came between the batch's commit and this script
-- applied its amounts (rebuild.lua) but not its reservations, which it may have just moved
-- into Redis.
local prefix = ARGV[i]
local settled = 0
for kind, value in string.gmatch(ARGV[i + 1], '([^%z]+)%z([^%z]+)%z') do
  local res_id = value
  if kind == 'e' then res_id = redis.call('GET', prefix .. ':resev:' .. value) end
  if res_id then
    local record = redis.call('GET', prefix .. ':res:' .. res_id)
    if record then
      local amount = nil
      for part in string.gmatch(record, '[^|]+') do
        if amount == nil then
          amount = part
        elseif redis.call('ZREM', part, res_id .. ':' .. amount) == 1 then
          redis.call('DECRBY', part .. ':sum', amount)
        end
      end
      redis.call('DEL', prefix .. ':res:' .. res_id)
      settled = settled + 1
    end
    if kind == 'e' then redis.call('DEL', prefix .. ':resev:' .. value) end
  end
end
return {applied, settled, trusted}
