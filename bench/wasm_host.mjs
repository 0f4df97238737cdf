// A minimal proxy-wasm (ABI 0.2.1) host in Node, for profiling a filter's
// guest side under V8 (Envoy's wasm engine) without Envoy:
//
//   node bench/wasm_host.mjs FILTER.wasm PLUGIN_CONFIG.json [--iterations N] [--scenario ok|failover|feedback]
//                            [--env K=V ...] [--body FILE]
//
// `feedback`: each iteration routes the body (a learned router's model) and then
// scores its answer with `POST /v1/feedback`; `feedback_us` is the score's share.
//
// Drives N requests through the HTTP context callbacks (headers, body, response
// headers, body, log, done, delete) with realistic Envoy-like header maps and
// prints JSON: µs per request (guest work + this host's cheap callbacks),
// host calls per request by function, and the request the filter produced.
// Host callbacks here are trivial (JS maps), so the time is essentially the
// guest's own: what Envoy adds per host call comes on top.
import { readFileSync } from "node:fs";
import { performance } from "node:perf_hooks";

const args = process.argv.slice(2);
const wasmPath = args[0];
const configPath = args[1];
if (!wasmPath || !configPath) {
  console.error("usage: node wasm_host.mjs FILTER.wasm PLUGIN_CONFIG [--iterations N] [--scenario ok|failover] [--env K=V] [--body FILE]");
  process.exit(2);
}
let iterations = 20000;
let scenario = "ok";
let bodyPath = null;
const envVars = {};
for (let i = 2; i < args.length; i++) {
  if (args[i] === "--iterations") iterations = parseInt(args[++i], 10);
  else if (args[i] === "--scenario") scenario = args[++i];
  else if (args[i] === "--body") bodyPath = args[++i];
  else if (args[i] === "--env") {
    const [k, ...v] = args[++i].split("=");
    envVars[k] = v.join("=");
  }
}

const enc = new TextEncoder();
const dec = new TextDecoder();
const pluginConfig = readFileSync(configPath);
const requestBody = bodyPath ? readFileSync(bodyPath) : enc.encode(JSON.stringify({ model: "gpt4o_16k", messages: [{ role: "user", content: "hi" }] }));
const responseBody = enc.encode(
  '{"id":"chatcmpl-mock1","object":"chat.completion","created":1700000000,"model":"gpt-4o","choices":[{"index":0,' +
    '"message":{"role":"assistant","content":"Mock reply from gpt-4o: the gateway routed this request.","refusal":null},' +
    '"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":200,"completion_tokens":12,"total_tokens":212},' +
    '"system_fingerprint":"fp_mock"}'
);

// ---- host state
const calls = new Map();
const count = (name) => calls.set(name, (calls.get(name) || 0) + 1);
let inst, mem;
// Views over guest memory, renewed only when the memory grows (keeps the host cheap).
let viewOf = null, u8View, dvView, bufView;
function refresh() {
  if (viewOf !== mem.buffer) {
    viewOf = mem.buffer;
    u8View = new Uint8Array(viewOf);
    dvView = new DataView(viewOf);
    bufView = Buffer.from(viewOf);
  }
}
const u8 = () => (refresh(), u8View);
const dv = () => (refresh(), dvView);
const str = (ptr, len) => (refresh(), bufView.toString("utf8", ptr, ptr + len));
const bytes = (ptr, len) => u8().slice(ptr, ptr + len);
const encCache = new Map();
const encodeCached = (s) => {
  let e = encCache.get(s);
  if (!e) {
    e = enc.encode(s);
    if (encCache.size < 4096) encCache.set(s, e);
  }
  return e;
};

// map type -> Array<[k, v]> (never mutated in place), or {raw} as the guest
// last wrote it whole: decoded only when a single header is read. Envoy's C++
// copies such a map at about the cost of a memcpy; decoding it in JS on every
// write would charge the guest for the harness's own slowness.
let maps = {};
const serialized = new WeakMap();
function pairsOf(type) {
  const m = maps[type];
  if (m && m.raw) maps[type] = deserializeMap(m.raw);
  return maps[type] || [];
}
function serializedMap(type) {
  const m = maps[type] || [];
  if (m.raw) return m.raw;
  let out = serialized.get(m);
  if (!out) serialized.set(m, (out = serializeMap(m)));
  return out;
}
let buffers = {}; // buffer type -> Uint8Array
const shared = new Map(); // key -> {value, cas}
let casSeq = 1;
const metrics = [];
let httpCalls = [];
let localResponse = null;
let effectiveContext = 0;

function give(data, outPtr, outLen) {
  const ptr = data.length ? inst.exports.proxy_on_memory_allocate(data.length) : 0;
  if (data.length) u8().set(data, ptr);
  const v = dv();
  v.setUint32(outPtr, ptr, true);
  v.setUint32(outLen, data.length, true);
}

function serializeMap(pairs) {
  const ks = pairs.map(([k, v]) => [encodeCached(k), encodeCached(v)]);
  let size = 4 + ks.length * 8;
  for (const [k, v] of ks) size += k.length + v.length + 2;
  const out = new Uint8Array(size);
  const v = new DataView(out.buffer);
  v.setUint32(0, ks.length, true);
  let p = 4;
  for (const [k, val] of ks) {
    v.setUint32(p, k.length, true);
    v.setUint32(p + 4, val.length, true);
    p += 8;
  }
  for (const [k, val] of ks) {
    out.set(k, p);
    p += k.length + 1;
    out.set(val, p);
    p += val.length + 1;
  }
  return out;
}

// Decodes with Buffer#toString, as `str` does: TextDecoder's per-call cost
// would be charged to the guest for every header of a whole-map write.
function deserializeMap(data) {
  const b = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  const n = b.readUInt32LE(0);
  let p = 4 + n * 8;
  const out = [];
  for (let i = 0; i < n; i++) {
    const kl = b.readUInt32LE(4 + i * 8), vl = b.readUInt32LE(8 + i * 8);
    const k = b.toString("utf8", p, p + kl);
    p += kl + 1;
    out.push([k, b.toString("utf8", p, p + vl)]);
    p += vl + 1;
  }
  return out;
}

const OK = 0, NOT_FOUND = 1, BAD_ARGUMENT = 2, CAS_MISMATCH = 8;

const env = {
  proxy_log(level, ptr, len) { count("proxy_log"); if (level >= 3) console.error(`[wasm log ${level}] ${str(ptr, len)}`); return OK; },
  proxy_get_current_time_nanoseconds(out) { count("proxy_get_current_time_nanoseconds"); dv().setBigUint64(out, BigInt(Date.now()) * 1000000n, true); return OK; },
  proxy_set_tick_period_milliseconds() { count("proxy_set_tick_period_milliseconds"); return OK; },
  proxy_get_buffer_bytes(type, start, max, outPtr, outLen) {
    count("proxy_get_buffer_bytes");
    const b = buffers[type];
    if (!b) return NOT_FOUND;
    // `max` is a u32 (the SDK asks for usize::MAX, which arrives as -1).
    give(b.subarray(start, Math.min(b.length, start + (max >>> 0))), outPtr, outLen);
    return OK;
  },
  proxy_set_buffer_bytes(type, start, size, ptr, len) {
    count("proxy_set_buffer_bytes");
    const b = buffers[type] || new Uint8Array(0);
    const data = bytes(ptr, len);
    const out = new Uint8Array(b.length - Math.min(size, b.length - start) + len);
    out.set(b.subarray(0, start), 0);
    out.set(data, start);
    out.set(b.subarray(start + size), start + len);
    buffers[type] = out;
    return OK;
  },
  proxy_get_header_map_pairs(type, outPtr, outLen) { count("proxy_get_header_map_pairs"); give(serializedMap(type), outPtr, outLen); return OK; },
  proxy_set_header_map_pairs(type, ptr, len) { count("proxy_set_header_map_pairs"); maps[type] = { raw: bytes(ptr, len) }; return OK; },
  proxy_get_header_map_value(type, kp, kl, outPtr, outLen) {
    count("proxy_get_header_map_value");
    const k = str(kp, kl);
    const e = pairsOf(type).find(([n]) => n === k);
    if (!e) return NOT_FOUND;
    give(encodeCached(e[1]), outPtr, outLen);
    return OK;
  },
  proxy_replace_header_map_value(type, kp, kl, vp, vl) {
    count("proxy_replace_header_map_value");
    const k = str(kp, kl), v = str(vp, vl);
    const m = (maps[type] = pairsOf(type).filter(([n]) => n !== k));
    m.push([k, v]);
    return OK;
  },
  proxy_add_header_map_value(type, kp, kl, vp, vl) { count("proxy_add_header_map_value"); maps[type] = [...pairsOf(type), [str(kp, kl), str(vp, vl)]]; return OK; },
  proxy_remove_header_map_value(type, kp, kl) {
    count("proxy_remove_header_map_value");
    const k = str(kp, kl);
    maps[type] = pairsOf(type).filter(([n]) => n !== k);
    return OK;
  },
  proxy_get_shared_data(kp, kl, outPtr, outLen, casPtr) {
    count("proxy_get_shared_data");
    const e = shared.get(str(kp, kl));
    if (!e) return NOT_FOUND;
    give(e.value, outPtr, outLen);
    dv().setUint32(casPtr, e.cas, true);
    return OK;
  },
  proxy_set_shared_data(kp, kl, vp, vl, cas) {
    count("proxy_set_shared_data");
    const k = str(kp, kl);
    const e = shared.get(k);
    if (cas !== 0 && e && e.cas !== cas) return CAS_MISMATCH;
    shared.set(k, { value: bytes(vp, vl), cas: casSeq++ });
    return OK;
  },
  proxy_define_metric(type, np, nl, outId) { count("proxy_define_metric"); metrics.push([str(np, nl), 0n]); dv().setUint32(outId, metrics.length - 1, true); return OK; },
  proxy_increment_metric(id, off) { count("proxy_increment_metric"); if (metrics[id]) metrics[id][1] += off; return OK; },
  proxy_record_metric(id, v) { count("proxy_record_metric"); if (metrics[id]) metrics[id][1] = v; return OK; },
  proxy_get_metric(id, out) { count("proxy_get_metric"); dv().setBigUint64(out, BigInt(metrics[id] ? metrics[id][1] : 0n), true); return OK; },
  proxy_send_local_response(status, dp, dl, bp, bl, hp, hl) {
    count("proxy_send_local_response");
    localResponse = { status, body: str(bp, bl) };
    return OK;
  },
  proxy_http_call(up, ul, hp, hl, bp, bl, tp, tl, timeout, tokenPtr) {
    count("proxy_http_call");
    const token = httpCalls.length + 1;
    httpCalls.push({ upstream: str(up, ul), headers: deserializeMap(bytes(hp, hl)), bodyLen: bl, token });
    dv().setUint32(tokenPtr, token, true);
    return OK;
  },
  proxy_get_property(pp, pl, outPtr, outLen) { count("proxy_get_property"); return NOT_FOUND; },
  proxy_set_property() { count("proxy_set_property"); return OK; },
  proxy_continue_stream() { count("proxy_continue_stream"); return OK; },
  proxy_close_stream() { count("proxy_close_stream"); return OK; },
  proxy_get_status(codePtr, msgPtr, msgLen) { count("proxy_get_status"); dv().setUint32(codePtr, 0, true); give(new Uint8Array(0), msgPtr, msgLen); return OK; },
  proxy_set_effective_context(id) { count("proxy_set_effective_context"); effectiveContext = id; return OK; },
  proxy_done() { count("proxy_done"); return OK; },
  proxy_call_foreign_function() { count("proxy_call_foreign_function"); return NOT_FOUND; },
};
// Any other import (queues, gRPC, ...) counts and answers "unimplemented".
const importsOf = (mod) => WebAssembly.Module.imports(mod);

const envEntries = Object.entries(envVars).map(([k, v]) => enc.encode(`${k}=${v}\0`));
const wasi = {
  random_get(ptr, len) { const a = u8(); for (let i = 0; i < len; i++) a[ptr + i] = (Math.random() * 256) | 0; return 0; },
  environ_sizes_get(countPtr, sizePtr) {
    const v = dv();
    v.setUint32(countPtr, envEntries.length, true);
    v.setUint32(sizePtr, envEntries.reduce((s, e) => s + e.length, 0), true);
    return 0;
  },
  environ_get(ptrs, buf) {
    const v = dv();
    let p = buf;
    envEntries.forEach((e, i) => { v.setUint32(ptrs + 4 * i, p, true); u8().set(e, p); p += e.length; });
    return 0;
  },
  fd_write(fd, iovs, n, outPtr) {
    const v = dv();
    let total = 0;
    for (let i = 0; i < n; i++) {
      const p = v.getUint32(iovs + 8 * i, true), l = v.getUint32(iovs + 8 * i + 4, true);
      process.stderr.write(u8().subarray(p, p + l));
      total += l;
    }
    v.setUint32(outPtr, total, true);
    return 0;
  },
  proc_exit(code) { throw new Error(`proc_exit(${code})`); },
  clock_time_get(id, prec, out) { dv().setBigUint64(out, BigInt(Date.now()) * 1000000n, true); return 0; },
  fd_close() { return 0; }, fd_seek() { return 0; }, fd_fdstat_get() { return 0; },
  args_sizes_get(c, s) { dv().setUint32(c, 0, true); dv().setUint32(s, 0, true); return 0; },
  args_get() { return 0; },
};

const module = new WebAssembly.Module(readFileSync(wasmPath));
const imports = { env: {}, wasi_snapshot_preview1: {} };
for (const imp of importsOf(module)) {
  const table = imp.module === "env" ? env : imp.module === "wasi_snapshot_preview1" ? wasi : {};
  const f = table[imp.name];
  imports[imp.module] = imports[imp.module] || {};
  imports[imp.module][imp.name] = f || ((...a) => { count(imp.name); return 12; /* Unimplemented */ });
}
inst = new WebAssembly.Instance(module, imports);
mem = inst.exports.memory;
const X = inst.exports;
if (X._initialize) X._initialize();
else if (X._start) X._start();

const ROOT = 1;
buffers[6] = new Uint8Array(0);
buffers[7] = new Uint8Array(pluginConfig);
X.proxy_on_context_create(ROOT, 0);
if (!X.proxy_on_vm_start(ROOT, 0)) throw new Error("on_vm_start failed");
if (!X.proxy_on_configure(ROOT, pluginConfig.length)) throw new Error("on_configure failed (see log above)");

const REQUEST_HEADERS = [
  [":authority", "127.0.0.1:10000"], [":path", "/v1/chat/completions"], [":method", "POST"], [":scheme", "http"],
  ["content-type", "application/json"], ["authorization", "Bearer client-key"], ["content-length", String(requestBody.length)],
  ["user-agent", "wrk"], ["accept", "*/*"], ["x-forwarded-proto", "http"], ["x-request-id", "3f1c2a8e-6d0b-4b7e-9a55-0c1d2e3f4a5b"],
];
const requestHeaders = () => REQUEST_HEADERS;
const responseHeaderCache = new Map();
const responseHeaders = (status) => {
  if (!responseHeaderCache.has(status)) responseHeaderCache.set(status, makeResponseHeaders(status));
  return responseHeaderCache.get(status);
};
const makeResponseHeaders = (status) => [
  [":status", String(status)], ["content-type", "application/json"], ["content-length", String(responseBody.length)],
  ["date", "Mon, 23 Nov 2026 12:00:00 GMT"], ["x-mock-provider", "alpha"], ["x-request-id", "req_mock_1"],
  ["x-ratelimit-remaining-requests", "4999"], ["x-envoy-upstream-service-time", "0"],
];
const EMPTY = new Uint8Array(0);

let ctxId = 100;
let lastUpstream = null;
let lastResponseHeaders = [];
function oneRequest(check) {
  const ctx = ++ctxId;
  maps = { 0: requestHeaders() };
  buffers = { 6: buffers[6], 7: buffers[7] };
  localResponse = null;
  httpCalls = [];
  X.proxy_on_context_create(ctx, ROOT);
  X.proxy_on_request_headers(ctx, maps[0].length, 0);
  // Envoy delivers a body as its data and then an end of stream (the body
  // buffered, because the filter paused): two callbacks a request.
  buffers[0] = requestBody;
  X.proxy_on_request_body(ctx, requestBody.length, 0);
  const a2 = X.proxy_on_request_body(ctx, requestBody.length, 1);
  if (check) lastUpstream = { headers: pairsOf(0), body: dec.decode(buffers[0]) };
  const status = scenario === "failover" ? 503 : 200;
  maps[2] = responseHeaders(status);
  const a3 = X.proxy_on_response_headers(ctx, maps[2].length, 0);
  if (scenario === "feedback") lastResponseHeaders = pairsOf(2);
  // An answer passed on as it comes: its data, then an empty end of stream.
  buffers[1] = responseBody;
  const a5 = X.proxy_on_response_body(ctx, responseBody.length, 0);
  const held = scenario === "failover";
  if (!held) buffers[1] = EMPTY;
  const a4 = X.proxy_on_response_body(ctx, held ? responseBody.length : 0, 1);
  if (scenario === "failover") {
    const call = httpCalls[0];
    if (!call) throw new Error("failover scenario: the filter made no http call");
    maps[6] = responseHeaders(200);
    buffers[4] = responseBody;
    X.proxy_on_http_call_response(ctx, call.token, maps[6].length, responseBody.length, 0);
    if (check && (!localResponse || localResponse.status !== 200)) throw new Error(`failover answer: ${JSON.stringify(localResponse)}`);
  }
  X.proxy_on_log(ctx);
  X.proxy_on_done(ctx);
  X.proxy_on_delete(ctx);
  if (check && scenario === "ok" && (a2 !== 0 || a3 !== 0 || a4 !== 0 || a5 !== 0 || localResponse)) {
    throw new Error(`unexpected actions ${[a2, a3, a4, a5]} local=${JSON.stringify(localResponse)}`);
  }
}

// A score of the answer just routed (scenario `feedback`): its own context,
// headers, then the JSON body in one end-of-stream callback.
let feedbackMs = 0;
let feedbackCalls = null;
const FEEDBACK_HEADERS = REQUEST_HEADERS.map(([k, v]) => [k, k === ":path" ? "/v1/feedback" : v]).filter(([k]) => k !== "content-length");
function oneScore(check) {
  const id = (lastResponseHeaders.find(([k]) => k === "x-switchboard-feedback-id") || [])[1];
  if (!id) throw new Error("feedback scenario: the answer has no x-switchboard-feedback-id (is the body's model a learned router?)");
  const body = enc.encode(JSON.stringify({ request_id: id, score: 0.0 }));
  const ctx = ++ctxId;
  const before = check ? new Map(calls) : null;
  const t = performance.now();
  maps = { 0: [...FEEDBACK_HEADERS, ["content-length", String(body.length)]] };
  buffers = { 6: buffers[6], 7: buffers[7] };
  localResponse = null;
  X.proxy_on_context_create(ctx, ROOT);
  X.proxy_on_request_headers(ctx, maps[0].length, 0);
  buffers[0] = body;
  X.proxy_on_request_body(ctx, body.length, 1);
  X.proxy_on_log(ctx);
  X.proxy_on_done(ctx);
  X.proxy_on_delete(ctx);
  feedbackMs += performance.now() - t;
  if (check) {
    if (!localResponse || localResponse.status !== 204) throw new Error(`feedback answer: ${JSON.stringify(localResponse)}`);
    feedbackCalls = Object.fromEntries([...calls.entries()].map(([k, n]) => [k, n - (before.get(k) || 0)]).filter(([, n]) => n > 0));
  }
}
const once = (check) => {
  oneRequest(check);
  if (scenario === "feedback") oneScore(check);
};

// Warm up (lets V8 tier up), then count one request's host calls, then time.
for (let i = 0; i < Math.min(5000, iterations); i++) once(i === 0);
calls.clear();
once(true);
const perRequest = Object.fromEntries([...calls.entries()].sort((a, b) => b[1] - a[1]));
feedbackMs = 0;
const t0 = performance.now();
const c0 = process.cpuUsage();
for (let i = 0; i < iterations; i++) once(false);
const c1 = process.cpuUsage(c0);
const wallUs = ((performance.now() - t0) * 1000) / iterations;
// CPU time, not wall time: less disturbed by other jobs on a shared machine.
const us = (c1.user + c1.system) / iterations;
console.log(JSON.stringify({
  wasm: wasmPath, scenario, iterations, us_per_request: Number(us.toFixed(2)), wall_us_per_request: Number(wallUs.toFixed(2)),
  host_calls_per_request: Object.values(perRequest).reduce((a, b) => a + b, 0), host_calls: perRequest,
  ...(scenario === "feedback" ? { feedback_wall_us: Number(((feedbackMs * 1000) / iterations).toFixed(2)), feedback_host_calls: feedbackCalls } : {}),
  upstream: lastUpstream && { path: (lastUpstream.headers.find(([k]) => k === ":path") || [])[1], body_bytes: lastUpstream.body.length,
    headers: lastUpstream.headers.map(([k]) => k) },
  node: process.version,
}));
