-- Serval conditional append. One call = one command's events, atomically.
-- Every key carries the same hash tag, so this runs unchanged on Redis Cluster.
--
-- KEYS[1]            log stream
-- KEYS[2]            versions hash (aggregate id -> version)
-- KEYS[3]            idempotency record (a hash; unused when ARGV[7] == 0)
-- KEYS[4 .. 3+R]     uniqueness reservations to take
-- KEYS[4+R .. 3+R+L] reservations to release (only if we own them)
--
-- ARGV[1] aggregate id        ARGV[2] expected version (-1: a single-event aggregate of a
--                                                      fresh id, not tracked in KEYS[2])
-- ARGV[3] event count N
-- ARGV[4] R                   ARGV[5] L                  ARGV[6] owner (aggregate id)
-- ARGV[7] idempotency TTL s   ARGV[8] request fingerprint
-- ARGV[9] rider count M       (single-event aggregates of fresh ids appended after the
--                              command's events, only if they are: e.g. the request's
--                              admin-audit record, so both share one fsync)
-- ARGV[10 ..] N + M triples: envelope bytes, key id, signature hex
--
-- Returns {'ok', id1, .., idN, rider ids..} | {'conflict', actual} | {'taken', key}
--       | {'duplicate', field, value, ...} (the stored idempotency record)
local agg = ARGV[1]
local expected = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local r = tonumber(ARGV[4])
local l = tonumber(ARGV[5])
local owner = ARGV[6]
local idem_ttl = tonumber(ARGV[7])
local m = tonumber(ARGV[9])

if idem_ttl > 0 then
  local prior = redis.call('HGETALL', KEYS[3])
  if #prior > 0 then
    table.insert(prior, 1, 'duplicate')
    return prior
  end
end

local tracked = expected >= 0
if tracked then
  local current = tonumber(redis.call('HGET', KEYS[2], agg) or '0')
  if current ~= expected then
    return {'conflict', tostring(current)}
  end
end

for i = 1, r do
  local holder = redis.call('GET', KEYS[3 + i])
  if holder and holder ~= owner then
    return {'taken', KEYS[3 + i]}
  end
end

local out = {'ok'}
for i = 0, n + m - 1 do
  local b = 10 + i * 3
  out[#out + 1] = redis.call('XADD', KEYS[1], '*', 'env', ARGV[b], 'kid', ARGV[b + 1], 'sig', ARGV[b + 2])
end
if tracked then
  redis.call('HSET', KEYS[2], agg, string.format('%d', expected + n))
end

for i = 1, r do
  redis.call('SET', KEYS[3 + i], owner)
end
for i = 1, l do
  local k = KEYS[3 + r + i]
  if redis.call('GET', k) == owner then
    redis.call('DEL', k)
  end
end

if idem_ttl > 0 then
  redis.call('HSET', KEYS[3], 'fingerprint', ARGV[8], 'aggregate_id', agg, 'last_entry_id', out[n + 1])
  redis.call('EXPIRE', KEYS[3], idem_ttl)
end
return out
