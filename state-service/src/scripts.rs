//! The Lua script that makes each step one atomic change in Redis: a check
//! and its count can never interleave with another proxy's.
//!
//! Proxies do not ask per request: each takes a *slice* of a tenant's
//! allowance (requests and tokens of the minute, parallel slots, budget),
//! admits from it locally, and comes back when it runs out, giving back
//! what it did not use (docs/fleet.md, "Allowance slices").
//!
//! Keys of one tenant share the hash tag `{TENANT}` (its name in hex), so a
//! Redis Cluster keeps them on one slot, as a script touching several needs.
//! Time is Redis's own (`TIME`): every proxy counts in the same minute
//! whatever its clock says.
//!
//! Per tenant (prefix `sb:{TENANT}`):
//! - `:w:START` hash {r: requests, k: tokens} of the minute starting at START,
//!   slices included (expires after 2 minutes);
//! - `:leases` sorted set of holders (proxies) scored by their expiry (ms):
//!   a proxy that crashes loses its slots and budget hold when it expires;
//! - `:slots` hash holder -> parallel slots it holds;
//! - `:held` hash holder -> micro-USD of the budget it holds (its slice, what
//!   its requests in flight hold, what they spent and it has not told yet);
//! - `:spent:PERIOD` the budget period's spend in micro-USD (expires after 35 days).

/// ARGV: holder, ttl_ms, rpm, tpm, max_parallel, budget limit (micro-USD),
/// budget period, tokens needed, worst-case cost needed (micro-USD),
/// grant (1: take a slice; 0: only give back), then what the holder gives
/// back: window start of its requests and tokens, requests, tokens, tokens
/// used over their reservation, parallel slots, micro-USD of budget, and
/// micro-USD spent (moved from its hold to the period's spend). 0 = none.
///
/// Answers one line: `ok REQUESTS TOKENS WINDOW_START NOW_MS GR GK GP GB`
/// (the window's counts after the grant; the slice granted: requests,
/// tokens, slots, micro-USD, each including the asking request's own),
/// `rpm RETRY_S`, `tpm RETRY_S`, `par IN_FLIGHT`, or `budget SPENT HELD NOW_S`.
/// What is given back is applied even when the grant is refused.
pub const SLICE: &str = r#"
local p, h = KEYS[1], ARGV[1]
local a = {}
for i = 2, #ARGV do a[i] = tonumber(ARGV[i]) or 0 end
local ttl, rpm, tpm, par, blimit, bperiod, tok, bworst = a[2], a[3], a[4], a[5], a[6], ARGV[7], a[8], a[9]
local grant, ws, br, bk, ko, bpar, bb, cost = a[10], a[11], a[12], a[13], a[14], a[15], a[16], a[17]
local function n(x) return string.format('%d', x) end
local t = redis.call('TIME')
local now_s = tonumber(t[1])
local now_ms = now_s * 1000 + math.floor(tonumber(t[2]) / 1000)
local leases, held, slots = p .. ':leases', p .. ':held', p .. ':slots'
local expired = redis.call('ZRANGEBYSCORE', leases, '-inf', now_ms)
if #expired > 0 then
  redis.call('ZREM', leases, unpack(expired))
  redis.call('HDEL', held, unpack(expired))
  redis.call('HDEL', slots, unpack(expired))
end
local function add(key, by)
  local v = tonumber(redis.call('HGET', key, h) or '0') + by
  if v <= 0 then redis.call('HDEL', key, h) else redis.call('HSET', key, h, v) end
end
local function sum(key)
  local s = 0
  for _, v in ipairs(redis.call('HVALS', key)) do s = s + tonumber(v) end
  return s
end
local start = now_s - now_s % 60
local w = p .. ':w:' .. start
local counts = redis.call('HMGET', w, 'r', 'k')
local requests, tokens = tonumber(counts[1] or '0'), tonumber(counts[2] or '0')
if ws == start and br + bk + ko > 0 then
  requests, tokens = math.max(0, requests - br), math.max(0, tokens - bk + ko)
  redis.call('HSET', w, 'r', requests, 'k', tokens)
end
if bpar > 0 then add(slots, -bpar) end
if bb + cost > 0 then add(held, -bb - cost) end
local spent_key = p .. ':spent:' .. bperiod
if cost > 0 then
  redis.call('INCRBY', spent_key, cost)
  redis.call('EXPIRE', spent_key, 35 * 86400)
end
if grant == 0 then return 'ok' end
local gb, gp = 0, 0
if blimit > 0 then
  local spent = tonumber(redis.call('GET', spent_key) or '0')
  local reserved = sum(held)
  local free = blimit - spent - reserved
  local fits = spent < blimit and free >= bworst
  local alone = spent < blimit and reserved == 0 and bworst > blimit
  if not (fits or alone) then return 'budget ' .. n(spent) .. ' ' .. n(reserved) .. ' ' .. n(now_s) end
  gb = alone and bworst or math.max(bworst, math.min(math.floor(free / 8), 64 * bworst))
end
if par > 0 then
  local in_flight = sum(slots)
  if in_flight >= par then return 'par ' .. n(in_flight) end
  gp = math.max(1, math.min(math.floor((par - in_flight) / 8), 64))
end
local retry = start + 60 - now_s
if rpm > 0 and requests >= rpm then return 'rpm ' .. n(retry) end
if tpm > 0 and tokens > 0 and tokens + tok > tpm then return 'tpm ' .. n(retry) end
local gr = rpm > 0 and math.max(1, math.min(math.floor((rpm - requests) / 8), 64)) or 1
local gk = tok
if tpm > 0 and tokens + tok < tpm then gk = math.max(tok, math.min(math.floor((tpm - tokens) / 8), 64 * tok)) end
redis.call('HSET', w, 'r', requests + gr, 'k', tokens + gk)
redis.call('EXPIRE', w, 120)
if gp > 0 then add(slots, gp) end
if gb > 0 then add(held, gb) end
if gp > 0 or gb > 0 then
  redis.call('ZADD', leases, now_ms + ttl, h)
  for _, k in ipairs({leases, held, slots}) do redis.call('PEXPIRE', k, ttl + 60000) end
end
return 'ok ' .. n(requests + gr) .. ' ' .. n(tokens + gk) .. ' ' .. n(start) .. ' ' .. n(now_ms) .. ' '
  .. n(gr) .. ' ' .. n(gk) .. ' ' .. n(gp) .. ' ' .. n(gb)
"#;
