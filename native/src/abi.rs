//! The subset of Envoy's dynamic-module C ABI this module uses, declared by
//! hand from `source/extensions/dynamic_modules/abi/abi.h` (ABI `v0.2.0`,
//! the one of Envoy 1.40.0, build 9e5580933739775e8bce696a57a2e1bc99368f23),
//! with safe wrappers that never panic.
//!
//! Envoy passes buffers as `{ptr, length}` structs by value; on x86-64 and
//! aarch64 such a struct travels in two registers, exactly like the
//! `(ptr, length)` pairs of earlier versions of the header.
//!
//! Every callback named in [`CALLBACKS`] is looked up in the Envoy process
//! when the module loads (`missing_callbacks`): an Envoy whose ABI lacks one
//! is refused with a message naming it, instead of crashing on first use.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_void};

/// The ABI version this module was written against, returned to Envoy at load.
pub const ABI_VERSION: &std::ffi::CStr = c"v0.2.0";
/// The Envoy build whose header the declarations below follow.
pub const ENVOY_BUILD: &str = "1.40.0 (9e5580933739775e8bce696a57a2e1bc99368f23)";

pub type EnvoyFilter = *mut c_void;
pub type EnvoyFilterConfig = *mut c_void;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyBuffer {
    pub ptr: *const u8,
    pub length: usize,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ModuleBuffer {
    pub ptr: *const u8,
    pub length: usize,
}

impl ModuleBuffer {
    pub fn of(bytes: &[u8]) -> ModuleBuffer {
        ModuleBuffer { ptr: bytes.as_ptr(), length: bytes.len() }
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyHeader {
    pub key_ptr: *const u8,
    pub key_length: usize,
    pub value_ptr: *const u8,
    pub value_length: usize,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ModuleHeader {
    pub key_ptr: *const u8,
    pub key_length: usize,
    pub value_ptr: *const u8,
    pub value_length: usize,
}

impl ModuleHeader {
    pub fn of(key: &str, value: &str) -> ModuleHeader {
        ModuleHeader {
            key_ptr: key.as_ptr(),
            key_length: key.len(),
            value_ptr: value.as_ptr(),
            value_length: value.len(),
        }
    }
}

/// `envoy_dynamic_module_type_http_header_type`.
pub const REQUEST_HEADERS: u32 = 0;
pub const RESPONSE_HEADERS: u32 = 2;
/// `envoy_dynamic_module_type_http_body_type`.
pub const RECEIVED_REQUEST_BODY: u32 = 0;
pub const BUFFERED_REQUEST_BODY: u32 = 1;
pub const RECEIVED_RESPONSE_BODY: u32 = 2;
pub const BUFFERED_RESPONSE_BODY: u32 = 3;

/// `envoy_dynamic_module_type_on_http_filter_{request,response}_headers_status`.
pub const HEADERS_CONTINUE: u32 = 0;
pub const HEADERS_STOP_ITERATION: u32 = 1;
/// `envoy_dynamic_module_type_on_http_filter_{request,response}_body_status`.
pub const BODY_CONTINUE: u32 = 0;
pub const BODY_STOP_AND_BUFFER: u32 = 1;
pub const BODY_STOP_NO_BUFFER: u32 = 3;

/// `envoy_dynamic_module_type_http_callout_init_result_Success` / `..._result_Success`.
pub const CALLOUT_INIT_SUCCESS: u32 = 0;

/// `envoy_dynamic_module_type_log_level`.
pub const LOG_INFO: u32 = 2;
pub const LOG_WARN: u32 = 3;
pub const LOG_ERROR: u32 = 4;

/// `envoy_dynamic_module_type_http_filter_stream_reset_reason_LocalReset`.
pub const RESET_LOCAL: u32 = 0;

/// `Dl_info` of `<dlfcn.h>` (glibc).
#[repr(C)]
pub struct DlInfo {
    fname: *const c_char,
    fbase: *mut c_void,
    sname: *const c_char,
    saddr: *mut c_void,
}

/// `RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE` (glibc).
const RTLD_PIN: i32 = 0x2 | 0x4 | 0x1000;

/// `envoy_dynamic_module_type_attribute_id_ResponseCodeDetails`.
pub const ATTRIBUTE_RESPONSE_CODE_DETAILS: u32 = 16;

extern "C" {
    fn envoy_dynamic_module_callback_log(level: u32, message: ModuleBuffer);
    fn envoy_dynamic_module_callback_http_get_headers_size(filter: EnvoyFilter, kind: u32) -> usize;
    fn envoy_dynamic_module_callback_http_get_headers(filter: EnvoyFilter, kind: u32, out: *mut EnvoyHeader) -> bool;
    fn envoy_dynamic_module_callback_http_set_header(
        filter: EnvoyFilter,
        kind: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_send_response(
        filter: EnvoyFilter,
        status: u32,
        headers: *mut ModuleHeader,
        headers_size: usize,
        body: ModuleBuffer,
        details: ModuleBuffer,
    );
    fn envoy_dynamic_module_callback_http_get_body_chunks_size(filter: EnvoyFilter, kind: u32) -> usize;
    fn envoy_dynamic_module_callback_http_get_body_chunks(
        filter: EnvoyFilter,
        kind: u32,
        out: *mut EnvoyBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_get_body_size(filter: EnvoyFilter, kind: u32) -> usize;
    fn envoy_dynamic_module_callback_http_append_body(filter: EnvoyFilter, kind: u32, data: ModuleBuffer) -> bool;
    fn envoy_dynamic_module_callback_http_drain_body(filter: EnvoyFilter, kind: u32, bytes: usize) -> bool;
    fn envoy_dynamic_module_callback_http_clear_route_cache(filter: EnvoyFilter);
    fn envoy_dynamic_module_callback_http_filter_http_callout(
        filter: EnvoyFilter,
        callout_id: *mut u64,
        cluster: ModuleBuffer,
        headers: *mut ModuleHeader,
        headers_size: usize,
        body: ModuleBuffer,
        timeout_ms: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_set_filter_state_bytes(
        filter: EnvoyFilter,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
        filter: EnvoyFilter,
        attribute: u32,
        out: *mut EnvoyBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: EnvoyFilterConfig,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_length: usize,
        id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
        config: EnvoyFilterConfig,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_define_histogram(
        config: EnvoyFilterConfig,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_length: usize,
        id: *mut usize,
    ) -> u32;

    fn envoy_dynamic_module_callback_http_filter_config_record_histogram_value(
        config: EnvoyFilterConfig,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;

    fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(config: EnvoyFilterConfig) -> *mut c_void;
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(scheduler: *mut c_void, event_id: u64);
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(scheduler: *mut c_void);
    fn envoy_dynamic_module_callback_http_filter_config_http_callout(
        config: EnvoyFilterConfig,
        callout_id: *mut u64,
        cluster: ModuleBuffer,
        headers: *mut ModuleHeader,
        headers_size: usize,
        body: ModuleBuffer,
        timeout_ms: u64,
    ) -> u32;

    fn envoy_dynamic_module_callback_http_filter_scheduler_new(filter: EnvoyFilter) -> *mut c_void;
    fn envoy_dynamic_module_callback_http_filter_scheduler_commit(scheduler: *mut c_void, event_id: u64);
    fn envoy_dynamic_module_callback_http_filter_scheduler_delete(scheduler: *mut c_void);
    fn envoy_dynamic_module_callback_http_filter_continue_encoding(filter: EnvoyFilter);
    fn envoy_dynamic_module_callback_http_filter_continue_decoding(filter: EnvoyFilter);
    fn envoy_dynamic_module_callback_http_filter_reset_stream(filter: EnvoyFilter, reason: u32, details: ModuleBuffer);
    fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
        config: EnvoyFilterConfig,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_length: usize,
        id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_set_gauge(
        config: EnvoyFilterConfig,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;

    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
    fn dladdr(addr: *const c_void, info: *mut DlInfo) -> i32;
    fn dlopen(file: *const c_char, mode: i32) -> *mut c_void;
}

/// The unit tests' executable has no Envoy to bind the callbacks to: these
/// empty definitions stand in (the tests never call into Envoy).
#[cfg(test)]
mod test_stubs {
    macro_rules! stubs {
        ($($name:ident),* $(,)?) => { $( #[no_mangle] extern "C" fn $name() {} )* };
    }
    stubs!(
        envoy_dynamic_module_callback_log,
        envoy_dynamic_module_callback_http_get_headers_size,
        envoy_dynamic_module_callback_http_get_headers,
        envoy_dynamic_module_callback_http_set_header,
        envoy_dynamic_module_callback_http_send_response,
        envoy_dynamic_module_callback_http_get_body_chunks_size,
        envoy_dynamic_module_callback_http_get_body_chunks,
        envoy_dynamic_module_callback_http_get_body_size,
        envoy_dynamic_module_callback_http_append_body,
        envoy_dynamic_module_callback_http_drain_body,
        envoy_dynamic_module_callback_http_clear_route_cache,
        envoy_dynamic_module_callback_http_filter_http_callout,
        envoy_dynamic_module_callback_http_set_filter_state_bytes,
        envoy_dynamic_module_callback_http_filter_get_attribute_string,
        envoy_dynamic_module_callback_http_filter_config_define_counter,
        envoy_dynamic_module_callback_http_filter_config_increment_counter,
        envoy_dynamic_module_callback_http_filter_config_define_histogram,
        envoy_dynamic_module_callback_http_filter_config_record_histogram_value,
        envoy_dynamic_module_callback_http_filter_config_scheduler_new,
        envoy_dynamic_module_callback_http_filter_config_scheduler_commit,
        envoy_dynamic_module_callback_http_filter_config_scheduler_delete,
        envoy_dynamic_module_callback_http_filter_config_http_callout,
        envoy_dynamic_module_callback_http_filter_scheduler_new,
        envoy_dynamic_module_callback_http_filter_scheduler_commit,
        envoy_dynamic_module_callback_http_filter_scheduler_delete,
        envoy_dynamic_module_callback_http_filter_reset_stream,
        envoy_dynamic_module_callback_http_filter_continue_encoding,
        envoy_dynamic_module_callback_http_filter_continue_decoding,
        envoy_dynamic_module_callback_http_filter_config_define_gauge,
        envoy_dynamic_module_callback_http_filter_config_set_gauge,
    );
}

/// Every callback declared above: present in the Envoy process or the module refuses to load.
pub const CALLBACKS: &[&std::ffi::CStr] = &[
    c"envoy_dynamic_module_callback_log",
    c"envoy_dynamic_module_callback_http_get_headers_size",
    c"envoy_dynamic_module_callback_http_get_headers",
    c"envoy_dynamic_module_callback_http_set_header",
    c"envoy_dynamic_module_callback_http_send_response",
    c"envoy_dynamic_module_callback_http_get_body_chunks_size",
    c"envoy_dynamic_module_callback_http_get_body_chunks",
    c"envoy_dynamic_module_callback_http_get_body_size",
    c"envoy_dynamic_module_callback_http_append_body",
    c"envoy_dynamic_module_callback_http_drain_body",
    c"envoy_dynamic_module_callback_http_clear_route_cache",
    c"envoy_dynamic_module_callback_http_filter_http_callout",
    c"envoy_dynamic_module_callback_http_set_filter_state_bytes",
    c"envoy_dynamic_module_callback_http_filter_get_attribute_string",
    c"envoy_dynamic_module_callback_http_filter_config_define_counter",
    c"envoy_dynamic_module_callback_http_filter_config_increment_counter",
    c"envoy_dynamic_module_callback_http_filter_config_define_histogram",
    c"envoy_dynamic_module_callback_http_filter_config_record_histogram_value",
    c"envoy_dynamic_module_callback_http_filter_config_scheduler_new",
    c"envoy_dynamic_module_callback_http_filter_config_scheduler_commit",
    c"envoy_dynamic_module_callback_http_filter_config_scheduler_delete",
    c"envoy_dynamic_module_callback_http_filter_config_http_callout",
    c"envoy_dynamic_module_callback_http_filter_scheduler_new",
    c"envoy_dynamic_module_callback_http_filter_scheduler_commit",
    c"envoy_dynamic_module_callback_http_filter_scheduler_delete",
    c"envoy_dynamic_module_callback_http_filter_reset_stream",
    c"envoy_dynamic_module_callback_http_filter_continue_encoding",
    c"envoy_dynamic_module_callback_http_filter_continue_decoding",
    c"envoy_dynamic_module_callback_http_filter_config_define_gauge",
    c"envoy_dynamic_module_callback_http_filter_config_set_gauge",
];

/// The callbacks of [`CALLBACKS`] the process does not export (`RTLD_DEFAULT` is the null handle on Linux).
pub fn missing_callbacks() -> Vec<&'static str> {
    CALLBACKS
        .iter()
        // SAFETY: dlsym only reads the NUL-terminated name.
        .filter(|name| unsafe { dlsym(std::ptr::null_mut(), name.as_ptr()) }.is_null())
        .map(|name| name.to_str().unwrap_or("?"))
        .collect()
}

/// Logs through Envoy's `dynamic_modules` logger.
pub fn log(level: u32, message: &str) {
    // SAFETY: the buffer is valid for the call.
    unsafe { envoy_dynamic_module_callback_log(level, ModuleBuffer::of(message.as_bytes())) }
}

/// # Safety
/// `ptr` must point at `len` readable bytes that live as long as `'a` (Envoy's buffers live until the hook returns).
unsafe fn slice<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
    if ptr.is_null() || len == 0 {
        &[]
    } else {
        std::slice::from_raw_parts(ptr, len)
    }
}

/// One HTTP stream's handle in Envoy, valid from `on_http_filter_new` to `on_http_filter_destroy`.
#[derive(Clone, Copy)]
pub struct Stream(pub EnvoyFilter);

impl Stream {
    /// Every header of the map (`REQUEST_HEADERS` or `RESPONSE_HEADERS`), copied.
    pub fn headers(self, kind: u32) -> Vec<(String, String)> {
        // SAFETY: the filter pointer is Envoy's, alive during the hook.
        let n = unsafe { envoy_dynamic_module_callback_http_get_headers_size(self.0, kind) };
        if n == 0 {
            return Vec::new();
        }
        let empty =
            EnvoyHeader { key_ptr: std::ptr::null(), key_length: 0, value_ptr: std::ptr::null(), value_length: 0 };
        let mut raw = vec![empty; n];
        // SAFETY: `raw` has room for the `n` headers Envoy reported.
        if !unsafe { envoy_dynamic_module_callback_http_get_headers(self.0, kind, raw.as_mut_ptr()) } {
            return Vec::new();
        }
        raw.iter()
            .map(|h| {
                // SAFETY: Envoy's header bytes live until the hook returns; copied here.
                let (k, v) = unsafe { (slice(h.key_ptr, h.key_length), slice(h.value_ptr, h.value_length)) };
                (String::from_utf8_lossy(k).into_owned(), String::from_utf8_lossy(v).into_owned())
            })
            .collect()
    }

    /// Sets (replaces) a header; an empty `value` with `remove` removes it.
    pub fn set_header(self, kind: u32, key: &str, value: &str) -> bool {
        // SAFETY: buffers valid for the call.
        unsafe {
            envoy_dynamic_module_callback_http_set_header(
                self.0,
                kind,
                ModuleBuffer::of(key.as_bytes()),
                ModuleBuffer::of(value.as_bytes()),
            )
        }
    }

    /// Removes a header (a null value).
    pub fn remove_header(self, kind: u32, key: &str) -> bool {
        let none = ModuleBuffer { ptr: std::ptr::null(), length: 0 };
        // SAFETY: the key is valid for the call; a null value removes.
        unsafe { envoy_dynamic_module_callback_http_set_header(self.0, kind, ModuleBuffer::of(key.as_bytes()), none) }
    }

    /// Answers the client from the module (Envoy's local reply).
    pub fn send_response(self, status: u16, headers: &[(&str, &str)], body: &[u8], details: &str) {
        let mut raw: Vec<ModuleHeader> = headers.iter().map(|(k, v)| ModuleHeader::of(k, v)).collect();
        // SAFETY: every buffer outlives the call; Envoy copies them.
        unsafe {
            envoy_dynamic_module_callback_http_send_response(
                self.0,
                u32::from(status),
                raw.as_mut_ptr(),
                raw.len(),
                ModuleBuffer::of(body),
                ModuleBuffer::of(details.as_bytes()),
            )
        }
    }

    /// Appends the chunks of a body (`kind`: received or buffered, request or response) to `out`.
    pub fn read_body(self, kind: u32, out: &mut Vec<u8>) {
        // SAFETY: the filter pointer is Envoy's, alive during the hook.
        let n = unsafe { envoy_dynamic_module_callback_http_get_body_chunks_size(self.0, kind) };
        if n == 0 {
            return;
        }
        let mut chunks = vec![EnvoyBuffer { ptr: std::ptr::null(), length: 0 }; n];
        // SAFETY: `chunks` has room for the `n` chunks Envoy reported.
        if !unsafe { envoy_dynamic_module_callback_http_get_body_chunks(self.0, kind, chunks.as_mut_ptr()) } {
            return;
        }
        for c in &chunks {
            // SAFETY: Envoy's chunk bytes live until the hook returns; copied here.
            out.extend_from_slice(unsafe { slice(c.ptr, c.length) });
        }
    }

    pub fn body_size(self, kind: u32) -> usize {
        // SAFETY: the filter pointer is Envoy's, alive during the hook.
        unsafe { envoy_dynamic_module_callback_http_get_body_size(self.0, kind) }
    }

    /// Replaces a body buffer's content.
    pub fn replace_body(self, kind: u32, data: &[u8]) -> bool {
        // SAFETY: the filter pointer is Envoy's; `data` valid for the call.
        unsafe {
            let size = envoy_dynamic_module_callback_http_get_body_size(self.0, kind);
            (size == 0 || envoy_dynamic_module_callback_http_drain_body(self.0, kind, size))
                && (data.is_empty()
                    || envoy_dynamic_module_callback_http_append_body(self.0, kind, ModuleBuffer::of(data)))
        }
    }

    pub fn drain_body(self, kind: u32) -> bool {
        // SAFETY: the filter pointer is Envoy's, alive during the hook.
        unsafe {
            let size = envoy_dynamic_module_callback_http_get_body_size(self.0, kind);
            size == 0 || envoy_dynamic_module_callback_http_drain_body(self.0, kind, size)
        }
    }

    /// Lets the response go on after a hook stopped it (from a callout's answer).
    pub fn continue_encoding(self) {
        // SAFETY: the filter pointer is Envoy's, alive during the hook.
        unsafe { envoy_dynamic_module_callback_http_filter_continue_encoding(self.0) }
    }

    /// Lets the request go on after a hook stopped it (from a callout's answer).
    pub fn continue_decoding(self) {
        // SAFETY: the filter pointer is Envoy's, alive during the hook.
        unsafe { envoy_dynamic_module_callback_http_filter_continue_decoding(self.0) }
    }

    /// The route is chosen again from the rewritten headers (the cluster header).
    pub fn clear_route_cache(self) {
        // SAFETY: the filter pointer is Envoy's, alive during the hook.
        unsafe { envoy_dynamic_module_callback_http_clear_route_cache(self.0) }
    }

    /// An HTTP call to `cluster`, answered in `on_http_filter_http_callout_done`; its id, or the init result.
    pub fn callout(self, cluster: &str, headers: &[(&str, &str)], body: &[u8], timeout_ms: u64) -> Result<u64, u32> {
        let mut raw: Vec<ModuleHeader> = headers.iter().map(|(k, v)| ModuleHeader::of(k, v)).collect();
        let mut id = 0u64;
        // SAFETY: every buffer outlives the call; Envoy copies them.
        let result = unsafe {
            envoy_dynamic_module_callback_http_filter_http_callout(
                self.0,
                &mut id,
                ModuleBuffer::of(cluster.as_bytes()),
                raw.as_mut_ptr(),
                raw.len(),
                ModuleBuffer::of(body),
                timeout_ms,
            )
        };
        if result == CALLOUT_INIT_SUCCESS {
            Ok(id)
        } else {
            Err(result)
        }
    }

    pub fn set_filter_state(self, key: &str, value: &[u8]) -> bool {
        // SAFETY: buffers valid for the call; Envoy copies them.
        unsafe {
            envoy_dynamic_module_callback_http_set_filter_state_bytes(
                self.0,
                ModuleBuffer::of(key.as_bytes()),
                ModuleBuffer::of(value),
            )
        }
    }

    pub fn attribute_string(self, attribute: u32) -> Option<String> {
        let mut out = EnvoyBuffer { ptr: std::ptr::null(), length: 0 };
        // SAFETY: `out` is written by Envoy; its bytes live until the hook returns and are copied.
        unsafe {
            envoy_dynamic_module_callback_http_filter_get_attribute_string(self.0, attribute, &mut out)
                .then(|| String::from_utf8_lossy(slice(out.ptr, out.length)).into_owned())
        }
    }
}

/// What a stat is to Envoy.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// Defines a counter, gauge or histogram named `name` on the filter configuration; its id.
pub fn define_metric(config: EnvoyFilterConfig, name: &str, kind: MetricKind) -> Option<usize> {
    let mut id = 0usize;
    let name = ModuleBuffer::of(name.as_bytes());
    // SAFETY: the configuration pointer is Envoy's, valid in `on_http_filter_config_new`.
    let result = unsafe {
        if kind == MetricKind::Gauge {
            envoy_dynamic_module_callback_http_filter_config_define_gauge(
                config,
                name,
                std::ptr::null_mut(),
                0,
                &mut id,
            )
        } else if kind == MetricKind::Histogram {
            envoy_dynamic_module_callback_http_filter_config_define_histogram(
                config,
                name,
                std::ptr::null_mut(),
                0,
                &mut id,
            )
        } else {
            envoy_dynamic_module_callback_http_filter_config_define_counter(
                config,
                name,
                std::ptr::null_mut(),
                0,
                &mut id,
            )
        }
    };
    (result == 0).then_some(id)
}

/// Adds `value` to a counter defined on the configuration, from any worker (Envoy's counters are atomic).
pub fn config_increment_counter(config: EnvoyFilterConfig, id: usize, value: u64) {
    // SAFETY: the configuration outlives its filters; no labels.
    unsafe {
        envoy_dynamic_module_callback_http_filter_config_increment_counter(config, id, std::ptr::null_mut(), 0, value);
    }
}

/// Records `value` in a histogram defined on the configuration, from any worker.
pub fn config_record_histogram(config: EnvoyFilterConfig, id: usize, value: u64) {
    // SAFETY: the configuration outlives its filters; no labels.
    unsafe {
        envoy_dynamic_module_callback_http_filter_config_record_histogram_value(
            config,
            id,
            std::ptr::null_mut(),
            0,
            value,
        );
    }
}

/// Envoy's scheduler of a filter configuration: an event committed from any
/// thread runs `on_http_filter_config_scheduled` on Envoy's main thread
/// (dropped if the configuration is gone by then).
pub struct ConfigScheduler(*mut c_void);

// SAFETY: Envoy's scheduler posts to the main thread's dispatcher, which takes events from any thread.
unsafe impl Send for ConfigScheduler {}
// SAFETY: as above; the scheduler holds no state the module changes.
unsafe impl Sync for ConfigScheduler {}

impl ConfigScheduler {
    /// Made in `on_http_filter_config_new` (Envoy's configuration pointer is valid there).
    pub fn new(config: EnvoyFilterConfig) -> Option<ConfigScheduler> {
        // SAFETY: the configuration pointer is Envoy's, valid during the hook.
        let ptr = unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_new(config) };
        (!ptr.is_null()).then_some(ConfigScheduler(ptr))
    }

    pub fn commit(&self, event_id: u64) {
        // SAFETY: the scheduler lives until this value is dropped.
        unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_commit(self.0, event_id) }
    }
}

impl Drop for ConfigScheduler {
    fn drop(&mut self) {
        // SAFETY: made by `scheduler_new`, deleted once.
        unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_delete(self.0) }
    }
}

/// An HTTP call of the filter configuration itself (from Envoy's main thread), answered in
/// `on_http_filter_config_http_callout_done` however long the request that asked for it lives.
pub fn config_callout(
    config: EnvoyFilterConfig,
    cluster: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout_ms: u64,
) -> Result<u64, u32> {
    let mut raw: Vec<ModuleHeader> = headers.iter().map(|(k, v)| ModuleHeader::of(k, v)).collect();
    let mut id = 0u64;
    // SAFETY: every buffer outlives the call; Envoy copies them.
    let result = unsafe {
        envoy_dynamic_module_callback_http_filter_config_http_callout(
            config,
            &mut id,
            ModuleBuffer::of(cluster.as_bytes()),
            raw.as_mut_ptr(),
            raw.len(),
            ModuleBuffer::of(body),
            timeout_ms,
        )
    };
    if result == CALLOUT_INIT_SUCCESS {
        Ok(id)
    } else {
        Err(result)
    }
}

/// Sets a gauge defined on the configuration, from any thread.
pub fn config_set_gauge(config: EnvoyFilterConfig, id: usize, value: u64) {
    // SAFETY: the configuration outlives its filters and ticks; no labels.
    unsafe {
        envoy_dynamic_module_callback_http_filter_config_set_gauge(config, id, std::ptr::null_mut(), 0, value);
    }
}

/// Resets the client's stream (a relayed stream that fell silent).
pub fn reset_stream(filter: EnvoyFilter, details: &str) {
    // SAFETY: the filter pointer is Envoy's, alive during the hook.
    unsafe {
        envoy_dynamic_module_callback_http_filter_reset_stream(
            filter,
            RESET_LOCAL,
            ModuleBuffer::of(details.as_bytes()),
        )
    }
}

/// Envoy's scheduler of one HTTP stream: an event committed from any thread runs
/// `on_http_filter_scheduled` on the stream's worker (dropped if the stream is gone by then).
pub struct FilterScheduler(*mut c_void);

// SAFETY: Envoy's scheduler posts to the worker's dispatcher, which takes events from any thread,
// and holds the stream only weakly; deleting it from another thread drops that weak reference.
unsafe impl Send for FilterScheduler {}
// SAFETY: as above; the scheduler holds no state the module changes.
unsafe impl Sync for FilterScheduler {}

impl FilterScheduler {
    /// Made during one of the stream's hooks, on its worker.
    pub fn new(filter: EnvoyFilter) -> Option<FilterScheduler> {
        // SAFETY: the filter pointer is Envoy's, alive during the hook.
        let ptr = unsafe { envoy_dynamic_module_callback_http_filter_scheduler_new(filter) };
        (!ptr.is_null()).then_some(FilterScheduler(ptr))
    }

    pub fn commit(&self, event_id: u64) {
        // SAFETY: the scheduler lives until this value is dropped.
        unsafe { envoy_dynamic_module_callback_http_filter_scheduler_commit(self.0, event_id) }
    }
}

impl Drop for FilterScheduler {
    fn drop(&mut self) {
        // SAFETY: made by `scheduler_new`, deleted once.
        unsafe { envoy_dynamic_module_callback_http_filter_scheduler_delete(self.0) }
    }
}

/// Keeps this module loaded for the life of the process: its timer thread
/// runs module code, so an unload (Envoy dropping the last configuration) must not unmap it.
pub fn pin_module() -> bool {
    let mut info = DlInfo {
        fname: std::ptr::null(),
        fbase: std::ptr::null_mut(),
        sname: std::ptr::null(),
        saddr: std::ptr::null_mut(),
    };
    let here = pin_module as *const c_void;
    // SAFETY: `info` is written by dladdr; the file name it gives is NUL-terminated and owned by the loader.
    unsafe { dladdr(here, &mut info) != 0 && !info.fname.is_null() && !dlopen(info.fname, RTLD_PIN).is_null() }
}
