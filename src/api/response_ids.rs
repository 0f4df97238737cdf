//! Responses API follow-ups: which provider created a response. A response
//! id the gateway relayed from a natively serving member (`openai`, `azure`)
//! is remembered with that member's provider and the tenant that asked, so
//! `GET`/`DELETE /v1/responses/{id}`, `POST .../{id}/cancel`,
//! `GET .../{id}/input_items` and a later request's `previous_response_id`
//! reach the provider that holds the response. The ids stay the provider's
//! own (answers pass through untouched). The table is bounded: ids hash into
//! `BUCKETS` shared-data keys of at most `PER_BUCKET` entries each, the
//! oldest entry of a full bucket giving way.

use crate::text;

/// Shared-data keys the table uses.
pub const BUCKETS: u64 = 1024;
/// Entries kept per bucket (about 1024 x 64 = 65,536 responses in all).
pub const PER_BUCKET: usize = 64;

/// Who holds a response: its provider (by name) and the tenant that created it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub provider: String,
    /// The tenant's name; empty without tenants.
    pub tenant: String,
}

/// A follow-up request on a stored response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Followup<'a> {
    pub id: &'a str,
    /// What follows the id in the path (`""`, `/cancel`, `/input_items`), query string included.
    pub rest: &'a str,
    /// The method the operation takes (`GET` on `{id}` also takes `DELETE`).
    pub methods: &'static [&'static str],
}

/// `path` (query string allowed) as a Responses follow-up, if it is one.
pub fn followup(path: &str) -> Option<Followup<'_>> {
    let after = path.strip_prefix("/v1/responses/")?;
    let end = after.find(['/', '?']).unwrap_or(after.len());
    let (id, rest) = after.split_at(end);
    if id.is_empty() {
        return None;
    }
    let op = rest.split('?').next().unwrap_or("").trim_end_matches('/');
    let methods: &'static [&'static str] = match op {
        "" => &["GET", "DELETE"],
        "/cancel" => &["POST"],
        "/input_items" => &["GET"],
        _ => return None,
    };
    Some(Followup { id, rest, methods })
}

/// The shared-data key of `id`'s bucket.
pub fn bucket_key(id: &str) -> String {
    // FNV-1a: stable across workers and builds.
    let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    format!("switchboard.responses.{:x}", hash % BUCKETS)
}

/// Whether `id` can be kept (a line of the bucket): no separators in it.
fn storable(s: &str) -> bool {
    !s.is_empty() && !s.bytes().any(|b| b == b'\t' || b == b'\n')
}

/// The bucket `value` with `id` held by `holder`, newest last, at most `PER_BUCKET` entries.
pub fn insert(value: &[u8], id: &str, holder: &Holder) -> Option<Vec<u8>> {
    if !storable(id) || !storable(&holder.provider) || holder.tenant.contains(['\t', '\n']) {
        return None;
    }
    let text = std::str::from_utf8(value).unwrap_or("");
    let kept: Vec<&str> = text.lines().filter(|l| !l.is_empty() && l.split('\t').next() != Some(id)).collect();
    let skip = kept.len().saturating_sub(PER_BUCKET - 1);
    let mut out = Vec::with_capacity(value.len() + id.len() + 64);
    for line in kept.iter().skip(skip) {
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(format!("{id}\t{}\t{}\n", holder.provider, holder.tenant).as_bytes());
    Some(out)
}

/// Who holds `id`, per the bucket `value`.
pub fn find(value: &[u8], id: &str) -> Option<Holder> {
    let text = std::str::from_utf8(value).ok()?;
    text.lines().rev().find_map(|line| {
        let mut parts = line.split('\t');
        (parts.next()? == id).then(|| Holder {
            provider: parts.next().unwrap_or_default().to_string(),
            tenant: parts.next().unwrap_or_default().to_string(),
        })
    })
}

/// The response id of a Responses answer from its first bytes: the first
/// `"id"` whose value starts with `resp_` (a `response` object, or a
/// stream's `response.created` event).
pub fn response_id_in(head: &[u8]) -> Option<&str> {
    const KEY: &[u8] = b"\"id\"";
    for value in text::values_after(head, KEY) {
        let Some(value) = value.strip_prefix(b"\"") else { continue };
        let len = value.iter().position(|b| *b == b'"')?;
        let id = std::str::from_utf8(value.get(..len)?).ok()?;
        if id.starts_with("resp_") && !id.contains('\\') {
            return Some(id);
        }
    }
    None
}

#[cfg(test)]
mod tests {

    use super::*;

    fn holder(p: &str) -> Holder {
        Holder { provider: p.into(), tenant: "t".into() }
    }

    #[test]
    fn follow_up_paths_and_their_methods() {
        let f = followup("/v1/responses/resp_1").unwrap();
        assert_eq!((f.id, f.rest, f.methods), ("resp_1", "", &["GET", "DELETE"][..]));
        let f = followup("/v1/responses/resp_1/cancel").unwrap();
        assert_eq!((f.id, f.rest, f.methods), ("resp_1", "/cancel", &["POST"][..]));
        let f = followup("/v1/responses/resp_1/input_items?limit=2&order=asc").unwrap();
        assert_eq!((f.id, f.rest, f.methods), ("resp_1", "/input_items?limit=2&order=asc", &["GET"][..]));
        assert_eq!(followup("/v1/responses/resp_1?include[]=x").unwrap().rest, "?include[]=x");
        assert!(followup("/v1/responses").is_none() && followup("/v1/responses/").is_none());
        assert!(followup("/v1/responses/resp_1/other").is_none());
    }

    #[test]
    fn buckets_keep_the_newest_entries_and_find_them() {
        let mut bucket = Vec::new();
        for i in 0..PER_BUCKET + 5 {
            bucket = insert(&bucket, &format!("resp_{i}"), &holder(&format!("p{i}"))).unwrap();
        }
        assert_eq!(bucket.iter().filter(|b| **b == b'\n').count(), PER_BUCKET);
        assert_eq!(find(&bucket, "resp_0"), None, "the oldest gave way");
        assert_eq!(find(&bucket, &format!("resp_{}", PER_BUCKET + 4)), Some(holder(&format!("p{}", PER_BUCKET + 4))));
        // Remembered again: one entry, the latest holder.
        let again = insert(&bucket, "resp_10", &holder("other")).unwrap();
        assert_eq!(find(&again, "resp_10"), Some(holder("other")));
        assert_eq!(again.iter().filter(|b| **b == b'\n').count(), PER_BUCKET);
        assert!(insert(b"", "bad\tid", &holder("p")).is_none());
        let no_tenant = Holder { provider: "p".into(), tenant: String::new() };
        assert_eq!(find(&insert(b"", "resp_x", &no_tenant).unwrap(), "resp_x"), Some(no_tenant));
        assert_eq!(bucket_key("resp_abc"), bucket_key("resp_abc"));
        assert!(bucket_key("resp_abc").starts_with("switchboard.responses."));
    }

    #[test]
    fn the_response_id_is_read_from_an_answer_or_a_stream() {
        assert_eq!(response_id_in(br#"{"id":"resp_67ab","object":"response"}"#), Some("resp_67ab"));
        let stream = b"event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\": \"resp_9\",\"object\":\"response\"}}\n\n";
        assert_eq!(response_id_in(stream), Some("resp_9"));
        assert_eq!(response_id_in(br#"{"output":[{"id":"msg_1"}],"id":"resp_2"}"#), Some("resp_2"));
        assert_eq!(response_id_in(br#"{"error":{"message":"x"}}"#), None);
        assert_eq!(response_id_in(br#"{"id":"resp_cut"#), None);
    }
}
