//! switchboard as an Envoy dynamic module (`libswitchboard_native.so`,
//! loaded by `envoy.filters.http.dynamic_modules`): the same host-free core
//! (`switchboard::exchange` and below) behind Envoy's native C ABI instead of
//! proxy-wasm. No VM: headers and bodies are read in place, and what requests
//! share lives in process memory (`state`).
//!
//! Every event hook Envoy calls is exported here and runs inside
//! `catch_unwind`: a panic fails that request with a 500 (as the wasm build
//! fails a trapped request) and never unwinds into Envoy. The module is
//! built with `panic = "unwind"` (`--profile native`) for that reason.
#![allow(unsafe_code)]

mod abi;
mod filter;
mod fleet;
mod metrics;
mod parked;
mod probes;
mod shadow;
mod state;
mod timers;

use std::ffi::{c_char, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use switchboard::config::Config;

use abi::{EnvoyBuffer, EnvoyFilter, EnvoyFilterConfig, EnvoyHeader, Stream};
use filter::Filter;
use state::Runtime;

/// Routes the core's `log` records to Envoy's `dynamic_modules` logger.
struct EnvoyLog;

impl log::Log for EnvoyLog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Info
    }

    fn log(&self, record: &log::Record<'_>) {
        let level = match record.level() {
            log::Level::Error => abi::LOG_ERROR,
            log::Level::Warn => abi::LOG_WARN,
            _ => abi::LOG_INFO,
        };
        abi::log(level, &record.args().to_string());
    }

    fn flush(&self) {}
}

static LOGGER: EnvoyLog = EnvoyLog;

/// Loaded into Envoy: refuses (null) when the process lacks a callback this
/// module calls, i.e. an Envoy of another dynamic-module ABI. Envoy itself
/// only warns when the version strings differ.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    catch_unwind(|| {
        let missing = abi::missing_callbacks();
        if !missing.is_empty() {
            // Envoy's logger is one of the callbacks: say it on stderr, where Envoy's own refusal follows.
            eprintln!(
                "switchboard: this Envoy does not provide the dynamic-module ABI {} that libswitchboard_native.so \
                 was built for (Envoy {}); missing: {}. Build the module against this Envoy's \
                 source/extensions/dynamic_modules/abi/abi.h, or use switchboard.wasm.",
                abi::ABI_VERSION.to_str().unwrap_or("?"),
                abi::ENVOY_BUILD,
                missing.join(", ")
            );
            return std::ptr::null();
        }
        if log::set_logger(&LOGGER).is_ok() {
            log::set_max_level(log::LevelFilter::Info);
        }
        abi::ABI_VERSION.as_ptr()
    })
    .unwrap_or(std::ptr::null())
}

/// # Safety
/// Envoy's buffer, valid during the hook.
unsafe fn envoy_bytes<'a>(b: EnvoyBuffer) -> &'a [u8] {
    if b.ptr.is_null() || b.length == 0 {
        &[]
    } else {
        std::slice::from_raw_parts(b.ptr, b.length)
    }
}

/// The filter configuration: the plugin configuration JSON (the same document
/// as the wasm build's), validated; an invalid one is refused naming the field.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    envoy_config: EnvoyFilterConfig,
    _name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: Envoy's configuration bytes, valid during the hook.
        let raw = unsafe { envoy_bytes(config) };
        let env = |name: &str| std::env::var(name).ok();
        match Config::parse(raw, &env) {
            Ok(config) => {
                log::info!(
                    "switchboard: configured {} pools ({} direct models), {} providers (native)",
                    config.listed_pools().count(),
                    config.direct_models().count(),
                    config.providers.len()
                );
                let metrics = metrics::Metrics::define(envoy_config, &config);
                match Runtime::new(config, metrics, raw) {
                    Ok(mut rt) => {
                        // The main thread's work: shadow copies, fleet mode's calls, and the tick (gauges, probes).
                        rt.scheduler = abi::ConfigScheduler::new(envoy_config);
                        let rt = Arc::new(rt);
                        timers::tick(&rt);
                        Box::into_raw(Box::new(rt)) as *const c_void
                    }
                    Err(e) => {
                        log::error!("switchboard: {e}");
                        std::ptr::null()
                    }
                }
            }
            Err(e) => {
                log::error!("switchboard: {e}");
                std::ptr::null()
            }
        }
    }))
    .unwrap_or(std::ptr::null())
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: *const c_void) {
    if !config.is_null() {
        // SAFETY: made by `Box::into_raw` in `config_new`, destroyed once by Envoy.
        let rt = unsafe { Box::from_raw(config as *mut Arc<Runtime>) };
        let _ = catch_unwind(AssertUnwindSafe(move || {
            timers::stop_ticks(&rt);
            drop(rt);
        }));
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(config: *const c_void, _envoy: EnvoyFilter) -> *const c_void {
    if config.is_null() {
        return std::ptr::null();
    }
    catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the configuration outlives its filters.
        let rt = unsafe { &*(config as *const Arc<Runtime>) };
        Box::into_raw(Box::new(Filter::new(rt.clone()))) as *const c_void
    }))
    .unwrap_or(std::ptr::null())
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_destroy(filter: *const c_void) {
    if !filter.is_null() {
        // SAFETY: made by `Box::into_raw` in `filter_new`, destroyed once by Envoy.
        let f = unsafe { Box::from_raw(filter as *mut Filter) };
        let _ = catch_unwind(AssertUnwindSafe(move || drop(f)));
    }
}

/// Runs a hook on the filter; a panic fails the request (500) and stops it.
fn with_filter(
    envoy: EnvoyFilter,
    filter: *const c_void,
    stopped: u32,
    hook: impl FnOnce(&mut Filter, Stream) -> u32,
) -> u32 {
    if filter.is_null() {
        return stopped;
    }
    // SAFETY: Envoy calls a filter's hooks one at a time on its worker thread, between new and destroy.
    let f = unsafe { &mut *(filter as *mut Filter) };
    let s = Stream(envoy);
    match catch_unwind(AssertUnwindSafe(|| hook(f, s))) {
        Ok(status) => status,
        Err(_) => {
            log::error!("switchboard: a panic was caught at the module boundary; the request fails with 500");
            let _ = catch_unwind(AssertUnwindSafe(|| f.fail_internal(s)));
            stopped
        }
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    envoy: EnvoyFilter,
    filter: *const c_void,
    end_of_stream: bool,
) -> u32 {
    with_filter(envoy, filter, abi::HEADERS_STOP_ITERATION, |f, s| f.on_request_headers(s, end_of_stream))
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    envoy: EnvoyFilter,
    filter: *const c_void,
    end_of_stream: bool,
) -> u32 {
    with_filter(envoy, filter, abi::BODY_STOP_NO_BUFFER, |f, s| f.on_request_body(s, end_of_stream))
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    envoy: EnvoyFilter,
    filter: *const c_void,
) -> u32 {
    with_filter(envoy, filter, abi::HEADERS_STOP_ITERATION, |f, s| f.on_request_trailers(s))
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    envoy: EnvoyFilter,
    filter: *const c_void,
    end_of_stream: bool,
) -> u32 {
    with_filter(envoy, filter, abi::HEADERS_STOP_ITERATION, |f, s| f.on_response_headers(s, end_of_stream))
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    envoy: EnvoyFilter,
    filter: *const c_void,
    end_of_stream: bool,
) -> u32 {
    with_filter(envoy, filter, abi::BODY_STOP_NO_BUFFER, |f, s| f.on_response_body(s, end_of_stream))
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    _envoy: EnvoyFilter,
    _filter: *const c_void,
) -> u32 {
    abi::HEADERS_CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(envoy: EnvoyFilter, filter: *const c_void) {
    with_filter(envoy, filter, 0, |f, s| {
        f.on_stream_complete(s);
        0
    });
}

/// # Safety
/// Envoy's arrays of `n` headers / chunks, valid during the hook (or null).
unsafe fn callout_answer(
    headers: *const EnvoyHeader,
    headers_size: usize,
    chunks: *const EnvoyBuffer,
    chunks_size: usize,
) -> (Vec<(String, String)>, Vec<u8>) {
    let headers: &[EnvoyHeader] =
        if headers.is_null() || headers_size == 0 { &[] } else { std::slice::from_raw_parts(headers, headers_size) };
    let chunks: &[EnvoyBuffer] =
        if chunks.is_null() || chunks_size == 0 { &[] } else { std::slice::from_raw_parts(chunks, chunks_size) };
    let text = |ptr: *const u8, len: usize| {
        String::from_utf8_lossy(envoy_bytes(EnvoyBuffer { ptr, length: len })).into_owned()
    };
    let headers = headers.iter().map(|h| (text(h.key_ptr, h.key_length), text(h.value_ptr, h.value_length))).collect();
    let mut body = Vec::new();
    for c in chunks {
        body.extend_from_slice(envoy_bytes(*c));
    }
    (headers, body)
}

/// A failover call's answer.
///
/// # Safety
/// Envoy passes `headers_size` headers and `chunks_size` body chunks (or null), valid during the hook.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    envoy: EnvoyFilter,
    filter: *const c_void,
    callout_id: u64,
    _result: u32,
    headers: *const EnvoyHeader,
    headers_size: usize,
    chunks: *const EnvoyBuffer,
    chunks_size: usize,
) {
    with_filter(envoy, filter, 0, |f, s| {
        // SAFETY: Envoy's arrays, valid during the hook; copied.
        let (headers, body) = unsafe { callout_answer(headers, headers_size, chunks, chunks_size) };
        f.on_callout_done(s, callout_id, headers, body);
        0
    });
}

// Hooks Envoy resolves in every module; this one does not use them.

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_new(
    _name: EnvoyBuffer,
    _config: EnvoyBuffer,
) -> *const c_void {
    std::ptr::null()
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_destroy(_config: *const c_void) {}

/// A request woken by the timer thread (its hedge, its stream's idle limit).
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(envoy: EnvoyFilter, filter: *const c_void, event: u64) {
    with_filter(envoy, filter, 0, |f, s| {
        f.on_scheduled(s, event);
        0
    });
}

/// Runs on Envoy's main thread for the configuration (`config`: made by `config_new`).
fn with_config(config: *const c_void, hook: impl FnOnce(&Runtime)) {
    if config.is_null() {
        return;
    }
    // SAFETY: Envoy calls configuration hooks only while the configuration lives.
    let rt = unsafe { &*(config as *const Arc<Runtime>) };
    if catch_unwind(AssertUnwindSafe(|| hook(rt))).is_err() {
        log::error!("switchboard: a panic was caught at the module boundary (configuration event)");
    }
}

/// The main thread woken by a worker (shadow copies, fleet tells to send) or by the timer thread (the tick).
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    envoy_config: EnvoyFilterConfig,
    config: *const c_void,
    event: u64,
) {
    with_config(config, |rt| match event {
        shadow::SEND_EVENT => shadow::Shadows::send_queued(rt, envoy_config),
        fleet::TELL_EVENT => fleet::Fleet::send_tells(rt, envoy_config),
        timers::TICK_EVENT => rt.tick(envoy_config),
        _ => {}
    });
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _e: EnvoyFilter,
    _f: *const c_void,
    _stream: u64,
    _headers: *const EnvoyHeader,
    _size: usize,
    _end: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _e: EnvoyFilter,
    _f: *const c_void,
    _stream: u64,
    _data: *const EnvoyBuffer,
    _count: usize,
    _end: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _e: EnvoyFilter,
    _f: *const c_void,
    _stream: u64,
    _trailers: *const EnvoyHeader,
    _size: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _e: EnvoyFilter,
    _f: *const c_void,
    _s: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _e: EnvoyFilter,
    _f: *const c_void,
    _s: u64,
    _reason: u32,
) {
}

/// The answer of one of the configuration's own calls: the fleet's poll, a probe's or a shadow copy's.
///
/// # Safety
/// Envoy passes `headers_size` headers and `chunks_size` body chunks (or null), valid during the hook.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    _envoy_config: EnvoyFilterConfig,
    config: *const c_void,
    callout_id: u64,
    _result: u32,
    headers: *const EnvoyHeader,
    headers_size: usize,
    chunks: *const EnvoyBuffer,
    chunks_size: usize,
) {
    with_config(config, |rt| {
        // SAFETY: Envoy's arrays, valid during the hook; copied.
        let (headers, body) = unsafe { callout_answer(headers, headers_size, chunks, chunks_size) };
        // A tell's answer is nobody's (the lease expires if it was lost).
        if !fleet::Fleet::answered(rt, callout_id, &headers, &body)
            && !probes::Prober::answered(rt, callout_id, &headers)
        {
            shadow::Shadows::answered(rt, callout_id, &headers, &body);
        }
    });
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_headers(
    _e: *mut c_void,
    _c: *const c_void,
    _stream: u64,
    _headers: *const EnvoyHeader,
    _size: usize,
    _end: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_data(
    _e: *mut c_void,
    _c: *const c_void,
    _stream: u64,
    _data: *const EnvoyBuffer,
    _count: usize,
    _end: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_trailers(
    _e: *mut c_void,
    _c: *const c_void,
    _stream: u64,
    _trailers: *const EnvoyHeader,
    _size: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_complete(
    _e: *mut c_void,
    _c: *const c_void,
    _s: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_reset(
    _e: *mut c_void,
    _c: *const c_void,
    _s: u64,
    _reason: u32,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _e: EnvoyFilter,
    _f: *const c_void,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _e: EnvoyFilter,
    _f: *const c_void,
) {
}

/// `Continue`: a local reply goes out as Envoy made it.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_local_reply(
    _e: EnvoyFilter,
    _f: *const c_void,
    _code: u32,
    _details: EnvoyBuffer,
    _reset_imminent: bool,
) -> u32 {
    0
}
