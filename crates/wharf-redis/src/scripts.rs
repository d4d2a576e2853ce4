//! The Lua scripts that make multi-step stream operations atomic, loaded
//! once per connection with `SCRIPT LOAD` and run with `EVALSHA`.

/// Publish with dedup, registering the topic for wildcard subscriptions.
/// KEYS: stream, dedup key (`""` = no dedup), topic registry set.
/// ARGV: maxlen (`0` = no trimming), dedup window s, topic, field, value, …
/// Returns `{stream id, 1 if duplicate else 0}`.
pub(crate) const PUBLISH: &str = r"
if KEYS[2] ~= '' then
  local prev = redis.call('GET', KEYS[2])
  if prev then return {prev, 1} end
end
redis.call('SADD', KEYS[3], ARGV[3])
local id
if ARGV[1] ~= '0' then
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, 4))
else
  id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 4))
end
if KEYS[2] ~= '' then redis.call('SET', KEYS[2], id, 'EX', ARGV[2]) end
return {id, 0}
";

/// Claims due nacked entries. KEYS: stream, retry zset.
/// ARGV: group, consumer, now ms, count. Returns `{{entry, delivery count}, …}`.
pub(crate) const CLAIM_DUE: &str = r"
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[3], 'LIMIT', 0, ARGV[4])
local out = {}
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[2], id)
  local e = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id)
  if e[1] then
    local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
    if p[1] then table.insert(out, {e[1], p[1][4]}) end
  end
end
return out
";

/// Claims entries whose lease expired, skipping those parked by a delayed
/// nack. KEYS: stream, retry zset. ARGV: group, consumer, min idle ms, count.
/// Returns `{{entry, delivery count}, …}`.
pub(crate) const CLAIM_EXPIRED: &str = r"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[3], '-', '+', ARGV[4])
local out = {}
for _, e in ipairs(p) do
  if not redis.call('ZSCORE', KEYS[2], e[1]) then
    local c = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], e[1])
    if c[1] then table.insert(out, {c[1], e[4] + 1}) end
  end
end
return out
";

/// Parks a nacked entry for redelivery, unless this delivery is stale (the
/// entry was acked, or redelivered since). KEYS: stream, retry zset.
/// ARGV: group, consumer, id, attempt, due ms. Returns 1 if parked, 0 if stale.
pub(crate) const PARK: &str = r"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if not p[1] or p[1][2] ~= ARGV[2] or tostring(p[1][4]) ~= ARGV[4] then return 0 end
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[3])
return 1
";
