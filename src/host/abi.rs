//! Host calls that return every status to the caller.
//!
//! The proxy-wasm SDK's own wrappers panic on any status they do not expect
//! (and on non-UTF-8 header values), and a panic traps the VM for every
//! request on the worker. These wrappers declare the same ABI imports and
//! hand back `Err(status)` instead. The SDK remains in use for the context
//! dispatcher, memory allocation and `dispatch_http_call` (whose token it
//! must register).
#![allow(unsafe_code, clashing_extern_declarations)]

use std::ptr::{null, null_mut};

/// A proxy-wasm status code other than Ok.
pub type Status = u32;
pub const OK: Status = 0;
pub const NOT_FOUND: Status = 1;
pub const CAS_MISMATCH: Status = 8;

pub const MAP_REQUEST_HEADERS: u32 = 0;
pub const MAP_RESPONSE_HEADERS: u32 = 2;
pub const MAP_HTTP_CALL_RESPONSE_HEADERS: u32 = 6;

pub const BUFFER_REQUEST_BODY: u32 = 0;
pub const BUFFER_RESPONSE_BODY: u32 = 1;
pub const BUFFER_HTTP_CALL_RESPONSE_BODY: u32 = 4;
pub const BUFFER_PLUGIN_CONFIGURATION: u32 = 7;

pub const METRIC_COUNTER: u32 = 0;
pub const METRIC_GAUGE: u32 = 1;
pub const METRIC_HISTOGRAM: u32 = 2;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_value(
        map: u32,
        key: *const u8,
        key_len: usize,
        out: *mut *mut u8,
        out_len: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map: u32,
        key: *const u8,
        key_len: usize,
        value: *const u8,
        value_len: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map: u32, key: *const u8, key_len: usize) -> u32;
    fn proxy_get_header_map_pairs(map: u32, out: *mut *mut u8, out_len: *mut usize) -> u32;
    fn proxy_get_buffer_bytes(buffer: u32, start: usize, max: usize, out: *mut *mut u8, out_len: *mut usize) -> u32;
    fn proxy_set_buffer_bytes(buffer: u32, start: usize, size: usize, data: *const u8, data_len: usize) -> u32;
    fn proxy_send_local_response(
        status: u32,
        details: *const u8,
        details_len: usize,
        body: *const u8,
        body_len: usize,
        headers: *const u8,
        headers_len: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_get_shared_data(
        key: *const u8,
        key_len: usize,
        out: *mut *mut u8,
        out_len: *mut usize,
        cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(key: *const u8, key_len: usize, value: *const u8, value_len: usize, cas: u32) -> u32;
    fn proxy_define_metric(kind: u32, name: *const u8, name_len: usize, out_id: *mut u32) -> u32;
    fn proxy_increment_metric(id: u32, offset: i64) -> u32;
    fn proxy_record_metric(id: u32, value: u64) -> u32;
    fn proxy_get_current_time_nanoseconds(out: *mut u64) -> u32;
    fn proxy_get_property(path: *const u8, path_len: usize, out: *mut *mut u8, out_len: *mut usize) -> u32;
    fn proxy_set_effective_context(context_id: u32) -> u32;
    fn proxy_close_stream(stream_type: u32) -> u32;
    fn proxy_continue_stream(stream_type: u32) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_set_property(path: *const u8, path_len: usize, value: *const u8, value_len: usize) -> u32;
}

fn status(code: u32) -> Result<(), Status> {
    if code == OK {
        Ok(())
    } else {
        Err(code)
    }
}

/// Takes ownership of a buffer the host allocated through the SDK's
/// `proxy_on_memory_allocate` (a boxed slice of exactly `len` bytes).
fn take(ptr: *mut u8, len: usize) -> Vec<u8> {
    if ptr.is_null() {
        return Vec::new();
    }
    // SAFETY: the host filled `len` bytes of a `len`-byte allocation made by
    // the SDK allocator, and ownership passes to us.
    unsafe { Vec::from_raw_parts(ptr, len, len) }
}

pub fn header(map: u32, name: &str) -> Result<Option<Vec<u8>>, Status> {
    let (mut ptr, mut len) = (null_mut(), 0usize);
    // SAFETY: valid pointers to locals and to `name`.
    let code = unsafe { proxy_get_header_map_value(map, name.as_ptr(), name.len(), &mut ptr, &mut len) };
    match code {
        OK => Ok(Some(take(ptr, len))),
        NOT_FOUND => Ok(None),
        other => Err(other),
    }
}

/// A header as text; values that are not UTF-8 read as absent.
pub fn header_str(map: u32, name: &str) -> Result<Option<String>, Status> {
    Ok(header(map, name)?.and_then(|v| String::from_utf8(v).ok()))
}

pub fn set_header(map: u32, name: &str, value: &str) -> Result<(), Status> {
    // SAFETY: valid pointers to `name` and `value`.
    status(unsafe { proxy_replace_header_map_value(map, name.as_ptr(), name.len(), value.as_ptr(), value.len()) })
}

pub fn remove_header(map: u32, name: &str) -> Result<(), Status> {
    // SAFETY: valid pointer to `name`.
    status(unsafe { proxy_remove_header_map_value(map, name.as_ptr(), name.len()) })
}

/// The whole header map in proxy-wasm's serialized form; read it with `pairs`.
pub fn headers_raw(map: u32) -> Result<Vec<u8>, Status> {
    let (mut ptr, mut len) = (null_mut(), 0usize);
    // SAFETY: valid pointers to locals.
    status(unsafe { proxy_get_header_map_pairs(map, &mut ptr, &mut len) })?;
    Ok(take(ptr, len))
}

/// The (name, value) pairs of a serialized header map, without copying.
/// A malformed map yields the pairs before the damage.
pub fn pairs(bytes: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    fn u32_at(b: &[u8], at: usize) -> Option<usize> {
        Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?) as usize)
    }
    let count = u32_at(bytes, 0).unwrap_or(0);
    let mut data = 4usize.saturating_add(count.saturating_mul(8));
    (0..count).map_while(move |i| {
        let klen = u32_at(bytes, 4 + i * 8)?;
        let vlen = u32_at(bytes, 8 + i * 8)?;
        let key = bytes.get(data..data.checked_add(klen)?)?;
        let value_start = data.checked_add(klen)?.checked_add(1)?;
        let value = bytes.get(value_start..value_start.checked_add(vlen)?)?;
        data = value_start.checked_add(vlen)?.checked_add(1)?;
        Some((key, value))
    })
}

pub fn buffer(kind: u32, start: usize, max: usize) -> Result<Vec<u8>, Status> {
    let (mut ptr, mut len) = (null_mut(), 0usize);
    // SAFETY: valid pointers to locals.
    let code = unsafe { proxy_get_buffer_bytes(kind, start, max, &mut ptr, &mut len) };
    match code {
        OK => Ok(take(ptr, len)),
        NOT_FOUND => Ok(Vec::new()),
        other => Err(other),
    }
}

pub fn set_buffer(kind: u32, start: usize, size: usize, data: &[u8]) -> Result<(), Status> {
    // SAFETY: valid pointer to `data`.
    status(unsafe { proxy_set_buffer_bytes(kind, start, size, data.as_ptr(), data.len()) })
}

pub fn send_local_response(code: u16, headers: &[(&str, &str)], body: &[u8]) -> Result<(), Status> {
    let map = encode_pairs(headers);
    // SAFETY: valid pointers to `body` and the serialized map; -1 = not gRPC.
    status(unsafe {
        proxy_send_local_response(u32::from(code), null(), 0, body.as_ptr(), body.len(), map.as_ptr(), map.len(), -1)
    })
}

/// Reads a shared-data entry and its CAS token (0 when absent).
pub fn shared_get(key: &str) -> Result<(Option<Vec<u8>>, u32), Status> {
    let (mut ptr, mut len, mut cas) = (null_mut(), 0usize, 0u32);
    // SAFETY: valid pointers to locals and `key`.
    let code = unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut ptr, &mut len, &mut cas) };
    match code {
        OK => Ok((Some(take(ptr, len)), cas)),
        NOT_FOUND => Ok((None, 0)),
        other => Err(other),
    }
}

/// Writes a shared-data entry if its CAS token is still `cas` (0: unconditionally).
pub fn shared_set(key: &str, value: &[u8], cas: u32) -> Result<(), Status> {
    // SAFETY: valid pointers to `key` and `value`.
    status(unsafe { proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas) })
}

/// Envoy's shared data as the host-free stores read and write it.
pub struct Data;

impl crate::exchange::SharedData for Data {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, u32), Status> {
        shared_get(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), crate::exchange::DataError> {
        shared_set(key, value, cas).map_err(|s| match s {
            CAS_MISMATCH => crate::exchange::DataError::CasMismatch,
            other => crate::exchange::DataError::Failed(other),
        })
    }
}

pub fn define_metric(kind: u32, name: &str) -> Result<u32, Status> {
    let mut id = 0u32;
    // SAFETY: valid pointers.
    status(unsafe { proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

pub fn increment_metric(id: u32, offset: i64) -> Result<(), Status> {
    // SAFETY: plain values.
    status(unsafe { proxy_increment_metric(id, offset) })
}

pub fn record_metric(id: u32, value: u64) -> Result<(), Status> {
    // SAFETY: plain values.
    status(unsafe { proxy_record_metric(id, value) })
}

pub fn now_ms() -> Result<u64, Status> {
    let mut ns = 0u64;
    // SAFETY: valid pointer to a local.
    status(unsafe { proxy_get_current_time_nanoseconds(&mut ns) })?;
    Ok(ns / 1_000_000)
}

/// A host property such as `["response", "code_details"]` (absent: `None`).
pub fn property(path: &[&str]) -> Result<Option<Vec<u8>>, Status> {
    let serialized = path.join("\0");
    let (mut ptr, mut len) = (null_mut(), 0usize);
    // SAFETY: valid pointers to locals and to `serialized`.
    let code = unsafe { proxy_get_property(serialized.as_ptr(), serialized.len(), &mut ptr, &mut len) };
    match code {
        OK => Ok(Some(take(ptr, len))),
        NOT_FOUND => Ok(None),
        other => Err(other),
    }
}

/// Sets a filter-state value of the request; Envoy stores it as `wasm.<name>`.
pub fn set_property(name: &str, value: &[u8]) -> Result<(), Status> {
    // SAFETY: valid pointers to `name` and `value`.
    status(unsafe { proxy_set_property(name.as_ptr(), name.len(), value.as_ptr(), value.len()) })
}

/// Makes later host calls (local replies, headers) act on `context_id`.
pub fn set_effective_context(context_id: u32) -> Result<(), Status> {
    // SAFETY: plain value.
    status(unsafe { proxy_set_effective_context(context_id) })
}

/// Resets the response stream (Envoy: the client's stream is reset, whatever was sent).
pub fn reset_response() -> Result<(), Status> {
    // SAFETY: plain value; 1 = HttpResponse.
    status(unsafe { proxy_close_stream(1) })
}

/// Resumes a paused request (Envoy: `continueDecoding`).
pub fn resume_request() -> Result<(), Status> {
    // SAFETY: plain value; 0 = HttpRequest.
    status(unsafe { proxy_continue_stream(0) })
}

/// Resumes a paused response (Envoy: `continueEncoding`, with what its buffer holds now).
pub fn resume_response() -> Result<(), Status> {
    // SAFETY: plain value; 1 = HttpResponse.
    status(unsafe { proxy_continue_stream(1) })
}

pub fn set_tick_period_ms(period: u32) -> Result<(), Status> {
    // SAFETY: plain value.
    status(unsafe { proxy_set_tick_period_milliseconds(period) })
}

/// proxy-wasm map encoding: count, (key len, value len) pairs, then
/// NUL-terminated keys and values.
fn encode_pairs(pairs: &[(&str, &str)]) -> Vec<u8> {
    let size = 4 + pairs.iter().map(|(k, v)| 10 + k.len() + v.len()).sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_pairs(bytes: &[u8]) -> Vec<(String, String)> {
        pairs(bytes)
            .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), String::from_utf8_lossy(v).into_owned()))
            .collect()
    }

    #[test]
    fn pairs_round_trip_and_truncation_is_safe() {
        let encoded = encode_pairs(&[(":status", "200"), ("content-type", "application/json")]);
        assert_eq!(
            decode_pairs(&encoded),
            vec![(":status".into(), "200".into()), ("content-type".into(), "application/json".into())]
        );
        for cut in 0..encoded.len() {
            let _ = decode_pairs(&encoded[..cut]);
        }
        assert!(decode_pairs(&[255, 255, 255, 255]).is_empty());
    }
}
