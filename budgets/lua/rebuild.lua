-- A tenant's counter rebuild, in one step: the pending counter updates not applied yet, then
-- every hash the rebuild owns set to what PostgreSQL says. Built by
-- budgets.counters.counters_reconcile, which holds the tenant's ingest lock exclusively, so
-- every batch it counts has committed; a batch's own update (record.lua) may still come after
-- its commit, before or after this script, never during it. No KEYS (read from ARGV in order).
-- ARGV:
--   ttl (s) of the counter hashes, ttl (s) of the markers set here,
--   n_pending, then per pending update: its marker key, n_hashes, then per hash: key,
--   "field\0amount\0..." (as record.lua: the tenant's hashes and the all-tenants ones); an
--   update whose marker is set was applied (by its batch, or the sweeper) and is skipped,
--   the others are applied and marked (so their batch's late update changes no counter),
--   n_owned, then per hash the rebuild owns: key, "field\0amount\0..." it must hold exactly.
-- Returns, per owned hash, its fields and values (HGETALL) as they were after the pending
-- updates and before the rebuild set them: what the rebuild corrected is the drift.
local ttl, marker_ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local pattern = '([^%z]+)%z([^%z]+)%z'
local i = 3
local n_pending = tonumber(ARGV[i])
i = i + 1
for p = 1, n_pending do
  local fresh = redis.call('SET', ARGV[i], 1, 'NX', 'EX', marker_ttl)
  local n_hashes = tonumber(ARGV[i + 1])
  i = i + 2
  for h = 1, n_hashes do
    if fresh then
      local key = ARGV[i]
      for field, amount in string.gmatch(ARGV[i + 1], pattern) do
        redis.call('HINCRBY', key, field, amount)
      end
      redis.call('EXPIRE', key, ttl)
    end
    i = i + 2
  end
end
local n_owned = tonumber(ARGV[i])
i = i + 1
local found = {}
for k = 1, n_owned do
  local key = ARGV[i]
  local have = redis.call('HGETALL', key)
  found[k] = have
  local extra = {}
  for j = 1, #have, 2 do extra[have[j]] = have[j + 1] end
  local changed = false
  for field, amount in string.gmatch(ARGV[i + 1], pattern) do
    if extra[field] ~= amount then
      redis.call('HSET', key, field, amount)
      changed = true
    end
    extra[field] = nil
  end
  for field, _ in pairs(extra) do redis.call('HDEL', key, field) end
  if changed then redis.call('EXPIRE', key, ttl) end
  i = i + 2
end
return found
