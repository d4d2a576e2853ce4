//! The Lua scripts that make multi-step stream operations atomic, loaded
//! once per connection with `SCRIPT LOAD` and run with `EVALSHA`.

/// Publishes a batch of messages to one stream, registering the topic for
/// wildcard subscriptions once per call.
/// KEYS: stream, topic registry set, then the dedup key of each message —
/// none at all when dedup is off (then no id is looked up or kept).
/// ARGV: maxlen (`0` = no trimming), dedup window s, topic, then per
/// message: its field count, field, value, …
/// Returns `{stream id, 1 if duplicate else 0, …}`, a pair per message. A
/// message whose id an earlier one of the same call had is a duplicate of
/// it, as if published one after the other.
pub(crate) const PUBLISH: &str = r"
local dedup = #KEYS > 2
redis.call('SADD', KEYS[2], ARGV[3])
local out = {}
local i = 4
local m = 2
while i <= #ARGV do
  m = m + 1
  local last = i + 2 * tonumber(ARGV[i])
  local prev = dedup and redis.call('GET', KEYS[m])
  if prev then
    out[#out + 1] = prev
    out[#out + 1] = 1
  else
    local id
    if ARGV[1] ~= '0' then
      id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, i + 1, last))
    else
      id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, i + 1, last))
    end
    if dedup then redis.call('SET', KEYS[m], id, 'EX', ARGV[2]) end
    out[#out + 1] = id
    out[#out + 1] = 0
  end
  i = last + 1
end
return out
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
