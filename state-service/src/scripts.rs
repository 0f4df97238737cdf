//! The Lua scripts that make each decision one atomic step in Redis: a
//! check and its count can never interleave with another proxy's.
//!
//! Keys of one tenant share the hash tag `{TENANT}` (its name in hex), so a
//! Redis Cluster keeps them on one slot, as a script touching several needs.
//! Time is Redis's own (`TIME`): every proxy counts in the same minute
//! whatever its clock says.
//!
//! Per tenant (prefix `sb:{TENANT}`):
//! - `:w:START` hash {r: requests, k: tokens} of the minute starting at START (expires after 2 minutes);
//! - `:leases` sorted set of requests in flight, scored by their expiry (ms):
//!   a proxy that crashes before settling loses its slot when the lease expires;
//! - `:held` hash lease -> worst-case micro-USD that request holds of the budget;
//! - `:spent:PERIOD` the budget period's spend in micro-USD (expires after 35 days).

/// ARGV: lease, ttl_ms, rpm, tpm, max_parallel, tokens, budget limit (micro-USD),
/// budget period, worst-case cost (micro-USD); 0 = no such limit.
///
/// Answers one line: `ok REQUESTS TOKENS WINDOW_START NOW_S` (the window
/// after counting this request), `rpm RETRY_S`, `tpm RETRY_S`, `par IN_FLIGHT`,
/// or `budget SPENT HELD NOW_S`. A refusal changes nothing.
pub const ADMIT: &str = r#"
local p = KEYS[1]
local lease = ARGV[1]
local ttl, rpm, tpm, par = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local tok, blimit, bperiod, bworst = tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8], tonumber(ARGV[9])
local function n(x) return string.format('%d', x) end
local t = redis.call('TIME')
local now_s = tonumber(t[1])
local now_ms = now_s * 1000 + math.floor(tonumber(t[2]) / 1000)
local leases, held = p .. ':leases', p .. ':held'
local expired = redis.call('ZRANGEBYSCORE', leases, '-inf', now_ms)
if #expired > 0 then
  redis.call('ZREM', leases, unpack(expired))
  redis.call('HDEL', held, unpack(expired))
end
if blimit > 0 then
  local spent = tonumber(redis.call('GET', p .. ':spent:' .. bperiod) or '0')
  local reserved = 0
  for _, v in ipairs(redis.call('HVALS', held)) do reserved = reserved + tonumber(v) end
  local fits = spent < blimit and spent + reserved + bworst <= blimit
  local alone = spent < blimit and reserved == 0 and bworst > blimit
  if not (fits or alone) then return 'budget ' .. n(spent) .. ' ' .. n(reserved) .. ' ' .. n(now_s) end
end
if par > 0 then
  local in_flight = redis.call('ZCARD', leases)
  if in_flight >= par then return 'par ' .. n(in_flight) end
end
local start = now_s - now_s % 60
local w = p .. ':w:' .. start
local counts = redis.call('HMGET', w, 'r', 'k')
local requests, tokens = tonumber(counts[1] or '0'), tonumber(counts[2] or '0')
local retry = start + 60 - now_s
if rpm > 0 and requests >= rpm then return 'rpm ' .. n(retry) end
if tpm > 0 and tokens > 0 and tokens + tok > tpm then return 'tpm ' .. n(retry) end
redis.call('HSET', w, 'r', requests + 1, 'k', tokens + tok)
redis.call('EXPIRE', w, 120)
if par > 0 or blimit > 0 then
  redis.call('ZADD', leases, now_ms + ttl, lease)
  redis.call('PEXPIRE', leases, ttl + 60000)
  if bworst > 0 then
    redis.call('HSET', held, lease, bworst)
    redis.call('PEXPIRE', held, ttl + 60000)
  end
end
return 'ok ' .. n(requests + 1) .. ' ' .. n(tokens + tok) .. ' ' .. n(start) .. ' ' .. n(now_s)
"#;

/// ARGV: lease, window start of the token reservation (0: none), tokens
/// reserved, tokens used, budget period, spend (micro-USD).
///
/// Ends a request: its lease (slot and budget hold) goes, its token
/// reservation becomes its usage (a window that has passed keeps what it
/// had; never below 0), its cost counts in the period. Answers `ok`.
pub const SETTLE: &str = r#"
local p = KEYS[1]
local lease, start = ARGV[1], ARGV[2]
local reserved, used, bperiod, cost = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
redis.call('ZREM', p .. ':leases', lease)
redis.call('HDEL', p .. ':held', lease)
if start ~= '0' and used ~= reserved then
  local w = p .. ':w:' .. start
  if redis.call('EXISTS', w) == 1 then
    if redis.call('HINCRBY', w, 'k', used - reserved) < 0 then redis.call('HSET', w, 'k', 0) end
  end
end
if cost > 0 then
  local s = p .. ':spent:' .. bperiod
  redis.call('INCRBY', s, cost)
  redis.call('EXPIRE', s, 35 * 86400)
end
return 'ok'
"#;
