//! What the gateway reports about each request, as plain data: the call-log
//! line (one JSON object, which Envoy's access log prints from filter state)
//! and the names of the stats recorded when a request ends. The host gathers
//! the facts while the request runs and reports them once, in `on_log`.

use crate::api::request::push_json_string;
use crate::api::usage::Tokens;
use crate::api::ErrorCode;
use crate::tenant::limits::civil;

/// The label of a request-end stat the request has no value for (no tenants
/// configured, refused before a pool or member was chosen).
pub const NO_LABEL: &str = "-";

/// Request-end stat families. Each name is followed by its labels
/// (`;gen_ai.operation.name=chat;pool=<pool>;member=<member>;tenant=<tenant>` and,
/// for some, one more: `gen_ai.token.type`, `outcome`, `error.type`), which
/// `envoy/render.py`'s `stats_tags` turn into tags.
pub const TOKEN_USAGE: &str = "gen_ai.client.token.usage";
pub const REQUESTS: &str = "switchboard.requests";
pub const REQUEST_DURATION: &str = "gen_ai.server.request.duration_milliseconds";
pub const TIME_TO_FIRST_TOKEN: &str = "gen_ai.server.time_to_first_token_milliseconds";
pub const COST: &str = "switchboard.cost_micro_usd";
pub const USAGE_ESTIMATED: &str = "switchboard.usage_estimated";

/// What a client request came to, as the request counter's `outcome` label:
/// a closed set, so every series exists (at 0) from configuration load and the
/// first request of each kind is counted by `rate()`/`increase()`. The exact
/// status and error code are in the call log and `switchboard.local_errors;code=<code>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 1xx-3xx.
    Ok,
    /// 4xx other than 429: the client's request was refused (by the gateway or the provider).
    ClientError,
    /// 429 for a rate limit: a tenant's rpm, tpm or max_parallel, or a provider's limit passed on.
    RateLimited,
    /// 429 `insufficient_quota`: a tenant's budget is spent.
    Quota,
    /// 5xx that is not an exhausted pool: a provider's failure passed on, an unreadable answer, a gateway fault.
    UpstreamError,
    /// Every member of the pool was tried or passed over (503, or 429 when all were rate limited).
    Exhausted,
    /// The client left before an answer (status 0).
    Cancelled,
}

impl Outcome {
    pub const ALL: [Outcome; 7] = [
        Outcome::Ok,
        Outcome::ClientError,
        Outcome::RateLimited,
        Outcome::Quota,
        Outcome::UpstreamError,
        Outcome::Exhausted,
        Outcome::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::ClientError => "client_error",
            Outcome::RateLimited => "rate_limited",
            Outcome::Quota => "quota",
            Outcome::UpstreamError => "upstream_error",
            Outcome::Exhausted => "exhausted",
            Outcome::Cancelled => "cancelled",
        }
    }

    /// The outcome of a request answered `status`, with the gateway's own
    /// error code if it answered one, `exhausted` when every member failed.
    pub fn of(status: u16, error: Option<ErrorCode>, exhausted: bool) -> Outcome {
        if exhausted {
            return Outcome::Exhausted;
        }
        match (status, error) {
            (0, _) => Outcome::Cancelled,
            (_, Some(ErrorCode::InsufficientQuota)) => Outcome::Quota,
            (429, _) => Outcome::RateLimited,
            (1..=399, _) => Outcome::Ok,
            (400..=499, _) => Outcome::ClientError,
            _ => Outcome::UpstreamError,
        }
    }
}

/// Appends a label to a stat name as `;<key>=<value>`, the form `envoy/render.py`'s
/// `stats_tags` extract: a value keeps its dots and every other character but
/// `;` (the label separator), `"`, `\\` and control characters, which read `_`.
pub fn push_label(name: &mut String, key: &str, value: &str) {
    name.push(';');
    name.push_str(key);
    name.push('=');
    name.extend(value.chars().map(|c| if c == ';' || c == '"' || c == '\\' || c.is_control() { '_' } else { c }));
}

/// `name` followed by its labels (see `push_label`).
pub fn labelled(name: &str, labels: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(name.len() + labels.iter().map(|(k, v)| k.len() + v.len() + 2).sum::<usize>());
    out.push_str(name);
    for (key, value) in labels {
        push_label(&mut out, key, value);
    }
    out
}

/// The GenAI operation of every request-end stat: each door (chat completions,
/// Responses, Anthropic Messages) is the spec's `chat` operation.
pub const OPERATION: &str = "chat";

/// A request-end stat's name: `<family>` with the operation, pool, member and
/// tenant labels, and `last` (another label) when the family has one.
pub fn request_stat(family: &str, pool: &str, member: &str, tenant: &str, last: Option<(&str, &str)>) -> String {
    let labels = [("gen_ai.operation.name", OPERATION), ("pool", pool), ("member", member), ("tenant", tenant)];
    let mut name = labelled(family, &labels);
    if let Some((key, value)) = last {
        push_label(&mut name, key, value);
    }
    name
}

/// One upstream attempt: the member, its status (0: no answer) and how long it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptLog<'a> {
    pub member: &'a str,
    pub status: u16,
    pub ms: u64,
}

/// One client request as the call log shows it: names, numbers and
/// statuses, never a key or an answer; a prompt only when the configuration
/// asks (`call_log_prompts`, for a learned router's training data).
#[derive(Debug, Default)]
pub struct CallRecord<'a> {
    /// When the request arrived (ms since the epoch).
    pub start_ms: u64,
    /// When it ended (ms since the epoch): lines are written in this order.
    pub end_ms: u64,
    pub request_id: &'a str,
    pub tenant: Option<&'a str>,
    /// The name the client asked for (`model`).
    pub model: Option<&'a str>,
    pub router: Option<&'a str>,
    pub rule: Option<&'a str>,
    /// The pool and member that served the answer, else the last one tried.
    pub pool: Option<&'a str>,
    pub member: Option<&'a str>,
    pub attempts: Vec<AttemptLog<'a>>,
    /// What the client got (0: it left before an answer; 502: an answer broken after its headers).
    pub status: u16,
    /// The answer broke after its headers went out (cut by the member, or silent past the idle limit).
    pub cut: bool,
    /// The gateway's own error code when it refused or failed the request itself
    /// (`insufficient_quota` for a budget, `rate_limit_exceeded` for rpm, ...).
    pub error: Option<&'a str>,
    /// Fleet mode: who decided the tenant's limits, `shared` (the state service) or `local`
    /// (this proxy, the service unavailable); absent otherwise.
    pub limits: Option<&'a str>,
    pub stream: bool,
    pub tokens: Option<Tokens>,
    /// The answer reported no usage: `tokens` are the gateway's estimate.
    pub usage_estimated: bool,
    pub cost_micro_usd: Option<u64>,
    /// From the request's arrival to the answer's first byte (a stream's first event) leaving.
    pub first_byte_ms: Option<u64>,
    pub duration_ms: u64,
    /// A learned router's answer: the id its feedback names, and (`call_log_prompts`) the text it scored.
    pub feedback_id: Option<&'a str>,
    pub prompt: Option<&'a str>,
    /// A score taken by `POST /v1/feedback`: the id scored and the score (JSON number text).
    pub feedback: Option<(&'a str, &'a str)>,
}

fn push_str_or_null(out: &mut Vec<u8>, key: &str, value: Option<&str>) {
    out.extend_from_slice(key.as_bytes());
    match value {
        Some(v) => push_json_string(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

fn push_num_or_null(out: &mut Vec<u8>, key: &str, value: Option<u64>) {
    out.extend_from_slice(key.as_bytes());
    match value {
        Some(n) => push_digits(out, n, 1),
        None => out.extend_from_slice(b"null"),
    }
}

/// `n` in decimal, zero-padded to `width` digits (without the formatting machinery: the log is written per request).
fn push_digits(out: &mut Vec<u8>, mut n: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut at = digits.len();
    while n > 0 || at + width > digits.len() {
        at -= 1;
        if let Some(d) = digits.get_mut(at) {
            *d = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if at == 0 {
            break;
        }
    }
    out.extend_from_slice(digits.get(at..).unwrap_or_default());
}

/// `2026-12-01T13:24:20.123Z` for ms since the epoch.
pub fn rfc3339_ms(ms: u64) -> String {
    let mut out = Vec::with_capacity(24);
    push_rfc3339_ms(&mut out, ms);
    String::from_utf8(out).unwrap_or_default()
}

fn push_rfc3339_ms(out: &mut Vec<u8>, ms: u64) {
    let s = ms / 1000;
    let (year, month, day) = civil(s / 86_400);
    let t = s % 86_400;
    let parts = [(year, 4, b'-'), (month, 2, b'-'), (day, 2, b'T'), (t / 3600, 2, b':'), (t / 60 % 60, 2, b':')];
    for (n, width, then) in parts.into_iter().chain([(t % 60, 2, b'.')]) {
        push_digits(out, n, width);
        out.push(then);
    }
    push_digits(out, ms % 1000, 3);
    out.push(b'Z');
}

impl CallRecord<'_> {
    /// The record as one line of JSON (no newline; the access log format adds it).
    pub fn json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(320 + 64 * self.attempts.len());
        out.extend_from_slice(b"{\"time\":\"");
        push_rfc3339_ms(&mut out, self.start_ms);
        out.extend_from_slice(b"\",\"end\":\"");
        push_rfc3339_ms(&mut out, self.end_ms);
        out.push(b'"');
        push_str_or_null(&mut out, ",\"request_id\":", Some(self.request_id));
        push_str_or_null(&mut out, ",\"tenant\":", self.tenant);
        push_str_or_null(&mut out, ",\"model\":", self.model);
        push_str_or_null(&mut out, ",\"router\":", self.router);
        push_str_or_null(&mut out, ",\"rule\":", self.rule);
        push_str_or_null(&mut out, ",\"pool\":", self.pool);
        push_str_or_null(&mut out, ",\"member\":", self.member);
        out.extend_from_slice(b",\"attempts\":[");
        for (i, a) in self.attempts.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            push_str_or_null(&mut out, "{\"member\":", Some(a.member));
            push_num_or_null(&mut out, ",\"status\":", Some(a.status.into()));
            push_num_or_null(&mut out, ",\"ms\":", Some(a.ms));
            out.push(b'}');
        }
        out.push(b']');
        push_num_or_null(&mut out, ",\"status\":", Some(self.status.into()));
        out.extend_from_slice(if self.cut { b",\"cut\":true" } else { b",\"cut\":false" });
        push_str_or_null(&mut out, ",\"error\":", self.error);
        if self.limits.is_some() {
            push_str_or_null(&mut out, ",\"limits\":", self.limits);
        }
        out.extend_from_slice(if self.stream { b",\"stream\":true" } else { b",\"stream\":false" });
        push_num_or_null(&mut out, ",\"prompt_tokens\":", self.tokens.map(|t| t.prompt));
        push_num_or_null(&mut out, ",\"completion_tokens\":", self.tokens.map(|t| t.completion));
        // Prompt-cache counts (within `prompt_tokens`), when the answer has any.
        if let Some(n @ Some(_)) = self.tokens.map(|t| t.cached) {
            push_num_or_null(&mut out, ",\"cached_tokens\":", n);
        }
        if let Some(n @ Some(_)) = self.tokens.map(|t| t.cache_write) {
            push_num_or_null(&mut out, ",\"cache_write_tokens\":", n);
        }
        out.extend_from_slice(match self.tokens {
            Some(_) if self.usage_estimated => b",\"usage_estimated\":true",
            _ => b",\"usage_estimated\":false",
        });
        push_num_or_null(&mut out, ",\"cost_micro_usd\":", self.cost_micro_usd);
        push_num_or_null(&mut out, ",\"first_byte_ms\":", self.first_byte_ms);
        push_num_or_null(&mut out, ",\"duration_ms\":", Some(self.duration_ms));
        if self.feedback_id.is_some() {
            push_str_or_null(&mut out, ",\"feedback_id\":", self.feedback_id);
        }
        if self.prompt.is_some() {
            push_str_or_null(&mut out, ",\"prompt\":", self.prompt);
        }
        if let Some((id, score)) = self.feedback {
            push_str_or_null(&mut out, ",\"feedback\":{\"feedback_id\":", Some(id));
            out.extend_from_slice(b",\"score\":");
            out.extend_from_slice(score.as_bytes());
            out.push(b'}');
        }
        out.push(b'}');
        out
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn call_record_is_one_json_object_with_every_field() {
        let record = CallRecord {
            start_ms: 1_764_595_460_123,
            end_ms: 1_764_595_460_140,
            request_id: "req-\"1\"\n",
            tenant: Some("team-a"),
            model: Some("auto"),
            router: Some("auto"),
            rule: Some("code"),
            pool: Some("gpt4o_16k"),
            member: Some("beta/gpt-4o"),
            attempts: vec![
                AttemptLog { member: "alpha/gpt-4o", status: 503, ms: 4 },
                AttemptLog { member: "beta/gpt-4o", status: 200, ms: 12 },
            ],
            status: 200,
            cut: false,
            error: None,
            limits: Some("shared"),
            stream: true,
            tokens: Some(Tokens { cached: Some(20), ..Tokens::new(30, 7) }),
            usage_estimated: false,
            cost_micro_usd: Some(91),
            first_byte_ms: Some(9),
            duration_ms: 17,
            ..CallRecord::default()
        };
        let line = record.json();
        assert!(!line.contains(&b'\n'), "one line");
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(
            v,
            json!({
                "time": "2025-12-01T13:24:20.123Z", "end": "2025-12-01T13:24:20.140Z", "request_id": "req-\"1\"\n", "tenant": "team-a",
                "model": "auto", "router": "auto", "rule": "code", "pool": "gpt4o_16k", "member": "beta/gpt-4o",
                "attempts": [{"member": "alpha/gpt-4o", "status": 503, "ms": 4}, {"member": "beta/gpt-4o", "status": 200, "ms": 12}],
                "status": 200, "cut": false, "error": null, "limits": "shared", "stream": true, "prompt_tokens": 30, "completion_tokens": 7, "cached_tokens": 20, "usage_estimated": false,
                "cost_micro_usd": 91, "first_byte_ms": 9, "duration_ms": 17
            })
        );
        // Optional fields are absent unless set: a learned router's answer and a score.
        assert!(v.get("feedback_id").is_none() && v.get("prompt").is_none() && v.get("feedback").is_none());
        let routed =
            CallRecord { request_id: "r", feedback_id: Some("00ab"), prompt: Some("a \"b\""), ..CallRecord::default() };
        let v: Value = serde_json::from_slice(&routed.json()).unwrap();
        assert_eq!((v["feedback_id"].clone(), v["prompt"].clone()), (json!("00ab"), json!("a \"b\"")));
        let scored = CallRecord { request_id: "r", feedback: Some(("00ab", "0.25")), ..CallRecord::default() };
        let v: Value = serde_json::from_slice(&scored.json()).unwrap();
        assert_eq!(v["feedback"], json!({"feedback_id": "00ab", "score": 0.25}));
        // A request refused before routing: nulls, no attempts.
        let refused =
            CallRecord { request_id: "r", status: 401, error: Some("invalid_api_key"), ..CallRecord::default() };
        let v: Value = serde_json::from_slice(&refused.json()).unwrap();
        assert_eq!(v["attempts"], json!([]));
        assert_eq!(v["error"], "invalid_api_key");
        assert_eq!(
            (v["tenant"].clone(), v["prompt_tokens"].clone(), v["status"].clone()),
            (Value::Null, Value::Null, json!(401))
        );
        assert_eq!(v["time"], "1970-01-01T00:00:00.000Z");
        let cut = CallRecord { request_id: "r", status: 502, cut: true, ..CallRecord::default() };
        let v: Value = serde_json::from_slice(&cut.json()).unwrap();
        assert_eq!((v["status"].clone(), v["cut"].clone()), (json!(502), json!(true)));
    }

    #[test]
    fn numbers_are_written_in_decimal() {
        for (n, width, text) in [(0, 1, "0"), (7, 3, "007"), (1234, 2, "1234"), (u64::MAX, 1, "18446744073709551615")] {
            let mut out = Vec::new();
            push_digits(&mut out, n, width);
            assert_eq!(String::from_utf8(out).unwrap(), text);
        }
    }

    #[test]
    fn timestamps_are_utc_rfc3339() {
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_ms(4_107_542_399_999), "2100-02-28T23:59:59.999Z");
    }

    #[test]
    fn outcomes_follow_the_status_and_the_gateways_own_code() {
        use ErrorCode as C;
        let cases = [
            ((200, None, false), "ok"),
            ((0, None, false), "cancelled"),
            ((400, Some(C::InvalidJson), false), "client_error"),
            ((401, Some(C::InvalidApiKey), false), "client_error"),
            ((404, None, false), "client_error"),
            ((429, Some(C::RateLimitExceeded), false), "rate_limited"),
            ((429, None, false), "rate_limited"),
            ((429, Some(C::InsufficientQuota), false), "quota"),
            ((502, Some(C::InvalidUpstreamResponse), false), "upstream_error"),
            ((500, None, false), "upstream_error"),
            ((503, Some(C::NoHealthyUpstream), true), "exhausted"),
            ((429, Some(C::RateLimitExceeded), true), "exhausted"),
        ];
        for ((status, code, exhausted), want) in cases {
            assert_eq!(Outcome::of(status, code, exhausted).as_str(), want, "{status} {code:?}");
        }
        let mut names: Vec<&str> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
        names.dedup();
        assert_eq!(names.len(), 7);
    }

    #[test]
    fn request_stats_carry_labels_as_configured_dots_included() {
        assert_eq!(
            request_stat(TOKEN_USAGE, "gpt-4.1", "alpha/gpt-4.1", "team.a", Some(("gen_ai.token.type", "input"))),
            "gen_ai.client.token.usage;gen_ai.operation.name=chat;pool=gpt-4.1;member=alpha/gpt-4.1;tenant=team.a;gen_ai.token.type=input"
        );
        assert_eq!(
            request_stat(REQUEST_DURATION, NO_LABEL, NO_LABEL, NO_LABEL, None),
            "gen_ai.server.request.duration_milliseconds;gen_ai.operation.name=chat;pool=-;member=-;tenant=-"
        );
        // Only what would end a label or break Prometheus's text format is replaced.
        assert_eq!(labelled("x", &[("pool", "a;b\"c\\d\ne:f@g h.i")]), "x;pool=a_b_c_d_e:f@g h.i");
    }
}
