//! Every top-level parameter of a chat completions body and its fate per
//! provider kind: sent as it is (the OpenAI-wire kinds), translated into the
//! member's own field (anthropic, gemini, bedrock), read by the gateway, or
//! refused. A request whose parameter a member refuses makes that member
//! unfit (`routing::filter`), unless the pool's `drop_params` or the request's
//! `x-switchboard-drop-params` header lets it be dropped; the answer then
//! names it in `x-switchboard-dropped-params`. The doors' own parameters map
//! onto these (`doors::MESSAGES_PARAMS`, `doors::RESPONSES_PARAMS`); the table
//! in docs/parameters.md is rendered from both and checked by a test.

use switchboard_schema::ProviderKind;

/// A provider kind as one bit of a kind mask.
pub const fn kind_bit(kind: ProviderKind) -> u8 {
    1 << kind as u8
}

const OPENAI: u8 = kind_bit(ProviderKind::Openai);
const COMPATIBLE: u8 = kind_bit(ProviderKind::OpenaiCompatible);
const AZURE: u8 = kind_bit(ProviderKind::Azure);
const ANTHROPIC: u8 = kind_bit(ProviderKind::Anthropic);
const GEMINI: u8 = kind_bit(ProviderKind::Gemini);
const BEDROCK: u8 = kind_bit(ProviderKind::Bedrock);
const WIRE: u8 = OPENAI | COMPATIBLE | AZURE;
const ALL: u8 = WIRE | ANTHROPIC | GEMINI | BEDROCK;
/// Read by the gateway itself (routing, usage): no kind refuses it.
const GATEWAY: u8 = 0x80 | ALL;

/// Chat parameters by bit, each with the kinds that take it: the OpenAI-wire
/// kinds as it is, the others translated (docs/parameters.md says into what).
/// Bit 63 ([`OTHER`]) stands for any parameter not listed. A name with a
/// `>N` suffix is the parameter set beyond a kind's limit (`stop>4`: more than
/// 4 sequences): such a request sets that bit too, and is named without it.
pub const PARAMS: [(&str, u8); 46] = [
    ("model", GATEWAY),
    ("messages", ALL),
    ("stream", ALL),
    ("stream_options", GATEWAY),
    ("provider", GATEWAY),
    ("fallback", GATEWAY),
    ("fallback_models", GATEWAY),
    ("load_balance_group", GATEWAY),
    ("metadata", GATEWAY),
    ("max_tokens", ALL),
    ("max_completion_tokens", ALL),
    ("temperature", ALL),
    ("top_p", ALL),
    ("stop", ALL),
    ("tools", ALL),
    ("tool_choice", ALL),
    ("response_format", ALL),
    ("top_k", COMPATIBLE | ANTHROPIC | GEMINI | BEDROCK),
    ("n", WIRE | GEMINI),
    ("seed", WIRE | GEMINI),
    ("presence_penalty", WIRE | GEMINI),
    ("frequency_penalty", WIRE | GEMINI),
    ("parallel_tool_calls", WIRE | ANTHROPIC),
    ("user", WIRE | ANTHROPIC),
    ("thinking", ALL),
    ("reasoning_effort", ALL),
    ("logprobs", WIRE),
    ("top_logprobs", WIRE),
    ("logit_bias", WIRE),
    ("service_tier", WIRE),
    ("store", WIRE),
    ("modalities", WIRE),
    ("audio", WIRE),
    ("prediction", WIRE),
    ("web_search_options", WIRE),
    ("verbosity", WIRE),
    ("prompt_cache_key", WIRE),
    ("safety_identifier", WIRE),
    ("functions", WIRE),
    ("function_call", WIRE),
    // Anthropic's automatic prompt caching; a no-op where caching is automatic.
    ("cache_control", ALL),
    // OpenAI takes at most 4 stop sequences, Gemini 5, Bedrock's Converse 2500.
    ("stop>4", COMPATIBLE | ANTHROPIC | GEMINI | BEDROCK),
    ("stop>5", COMPATIBLE | ANTHROPIC | BEDROCK),
    ("stop>2500", COMPATIBLE | ANTHROPIC),
    // The Messages door's `anthropic-beta` header (those betas that change what the
    // request means, `doors::messages::HARMLESS_BETAS` aside): Bedrock's Claude models
    // take it as `anthropic_beta`.
    ("anthropic-beta", ANTHROPIC | BEDROCK),
    // Claude's output settings beyond what other fields carry (its `effort` when not
    // thinking adaptively); Bedrock takes it for Claude models.
    ("output_config", ANTHROPIC | BEDROCK),
];

/// The stop-sequence counts beyond which a kind refuses (the `stop>N` bits).
const STOP_LIMITS: [usize; 3] = [4, 5, 2500];

/// The bit of a parameter the table does not list: the OpenAI-wire kinds get
/// it as it is, the translated kinds cannot take it.
pub const OTHER: u64 = 1 << 63;

/// Values that ask for nothing: the parameter's default (or `null`).
const NEUTRAL: [(&str, &str); 10] = [
    ("truncation", "\"disabled\""),
    ("n", "1"),
    ("logprobs", "false"),
    ("store", "false"),
    ("parallel_tool_calls", "true"),
    ("presence_penalty", "0"),
    ("frequency_penalty", "0"),
    ("modalities", "[\"text\"]"),
    ("background", "false"),
    ("include", "[]"),
];

/// Whether `raw` (a JSON value) asks nothing of `name`.
pub fn neutral(name: &str, raw: &str) -> bool {
    raw == "null" || NEUTRAL.iter().any(|(n, v)| *n == name && *v == raw)
}

/// The bit of parameter `name` set to `raw`: 0 when neutral, [`OTHER`] when unlisted.
pub fn bit(name: &str, raw: &str) -> u64 {
    if neutral(name, raw) {
        return 0;
    }
    match PARAMS.iter().position(|p| p.0 == name) {
        Some(STOP) => 1 << STOP | beyond_stop_limits(raw),
        Some(i) => 1 << i,
        None => OTHER,
    }
}

/// The rows of `stop`: its own, then one per limit (`stop>4`, ...).
const STOP: usize = 13;
const STOP_BEYOND: usize = 41;
const STOP_ROWS: u64 = 1 << STOP | 0b111 << STOP_BEYOND;

/// The `stop>N` bits of a `stop` value: one per limit its sequence count passes.
fn beyond_stop_limits(raw: &str) -> u64 {
    // A string is one sequence.
    if !raw.starts_with('[') {
        return 0;
    }
    let count = serde_json::from_str::<Vec<&serde_json::value::RawValue>>(raw).map_or(0, |v| v.len());
    STOP_LIMITS.iter().enumerate().filter(|(_, limit)| count > **limit).fold(0, |m, (k, _)| m | 1 << (STOP_BEYOND + k))
}

/// A parameter's name as the client wrote it (`stop` for `stop>4`).
fn base(name: &str) -> &str {
    if name.starts_with("stop>") {
        "stop"
    } else {
        name
    }
}

/// The bits of parameter `name` ([`OTHER`] when unlisted): each of its rows
/// (`stop` has its limits' too). A `const` so that a name the code asks for
/// is looked up once, at build time.
pub const fn named(name: &str) -> u64 {
    const fn same(a: &[u8], b: &[u8]) -> bool {
        match (a.split_first(), b.split_first()) {
            (Some((x, a)), Some((y, b))) => *x == *y && same(a, b),
            (None, None) => true,
            _ => false,
        }
    }
    let (mut rest, mut row): (&[(&str, u8)], usize) = (&PARAMS, 0);
    while let Some(((param, _), after)) = rest.split_first() {
        if same(param.as_bytes(), name.as_bytes()) {
            return if row == STOP { STOP_ROWS } else { 1 << row };
        }
        (rest, row) = (after, row + 1);
    }
    OTHER
}

/// The bits of the parameters a member of `kind` cannot take (and [`OTHER`]
/// for the translated kinds).
pub fn refused_by(kind: ProviderKind) -> u64 {
    let bit = kind_bit(kind);
    let other = if bit & WIRE == 0 { OTHER } else { 0 };
    PARAMS.iter().enumerate().filter(|(_, p)| p.1 & bit == 0).fold(other, |m, (i, _)| m | 1 << i)
}

/// The name of the lowest parameter bit in `bits` (`other` for [`OTHER`]).
pub fn first_name(bits: u64, other: &str) -> &str {
    let i = bits.trailing_zeros() as usize;
    PARAMS.get(i).map_or(other, |p| base(p.0))
}

/// The names of the parameters in `bits`, comma-separated (`other` for [`OTHER`]).
pub fn names(bits: u64, other: &str) -> String {
    let listed = PARAMS.iter().enumerate().filter(|(i, _)| bits & 1 << i != 0).map(|(_, p)| base(p.0));
    let mut all: Vec<&str> = Vec::new();
    for name in listed {
        if !all.contains(&name) {
            all.push(name);
        }
    }
    if bits & OTHER != 0 {
        all.push(other);
    }
    all.join(", ")
}

/// A `drop_params` list (config, or the request header): names of listed
/// parameters, `all` (or `true`) for every one; `Err` names an unknown one.
pub fn drop_mask<'n>(names: &mut dyn Iterator<Item = &'n str>) -> Result<u64, &'n str> {
    let mut mask = 0;
    for name in names.map(str::trim).filter(|n| !n.is_empty()) {
        mask |= match named(name) {
            OTHER if matches!(name, "all" | "true") => u64::MAX,
            OTHER => return Err(name),
            bit => bit,
        };
    }
    Ok(mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_follow_the_table() {
        assert_eq!(bit("n", "1"), 0);
        assert_eq!(bit("n", "2"), 1 << 18);
        assert_eq!(bit("top_logprobs", "null"), 0);
        assert_eq!((bit("frobnicate", "1"), named("n")), (OTHER, 1 << 18));
        assert_eq!(first_name(1 << 18 | OTHER, "frobnicate"), "n");
        assert_eq!(names(1 << 17 | OTHER, "x"), "top_k, x");
        assert_eq!(drop_mask(&mut "top_k, n ".split(',')), Ok(1 << 17 | 1 << 18));
        assert_eq!(drop_mask(&mut ["nope"].into_iter()), Err("nope"));
        assert_eq!(drop_mask(&mut ["true"].into_iter()), Ok(u64::MAX));
    }

    #[test]
    fn stop_beyond_a_kinds_limit_is_refused_by_that_kind_and_named_stop() {
        assert_eq!((PARAMS[STOP].0, PARAMS[STOP_BEYOND].0, PARAMS[STOP_BEYOND + 2].0), ("stop", "stop>4", "stop>2500"));
        let five = bit("stop", r#"["a","b","c","d","e"]"#);
        assert_eq!(five & !named("stop"), 0, "only stop rows");
        assert_eq!(bit("stop", r#"["a","b","c","d"]"#), bit("stop", "\"a\""));
        assert_eq!(bit("stop", r#"["a,b,c,d,e,f", "\",\""]"#), bit("stop", "\"a,b,c,d,e,f\""));
        let refuses = |kind, bits| refused_by(kind) & bits != 0;
        assert!(refuses(ProviderKind::Openai, five) && refuses(ProviderKind::Azure, five));
        assert!(!refuses(ProviderKind::Gemini, five) && !refuses(ProviderKind::Bedrock, five));
        let six = bit("stop", r#"["a","b","c","d","e","f"]"#);
        assert!(refuses(ProviderKind::Gemini, six) && !refuses(ProviderKind::Anthropic, six));
        assert_eq!((first_name(six & refused_by(ProviderKind::Gemini), "x"), names(six, "x")), ("stop", "stop".into()));
        assert_eq!(drop_mask(&mut ["stop"].into_iter()), Ok(named("stop")));
    }

    #[test]
    fn kinds_refuse_what_they_cannot_take() {
        let refuses = |kind, name| refused_by(kind) & bit(name, "2") != 0;
        assert!(refuses(ProviderKind::Anthropic, "n") && !refuses(ProviderKind::Gemini, "n"));
        assert!(refuses(ProviderKind::Openai, "top_k") && !refuses(ProviderKind::OpenaiCompatible, "top_k"));
        assert!(!refuses(ProviderKind::Openai, "logprobs") && refuses(ProviderKind::Bedrock, "logprobs"));
        assert!(!refuses(ProviderKind::Openai, "fallback") && !refuses(ProviderKind::Anthropic, "metadata"));
        assert!(refused_by(ProviderKind::Gemini) & OTHER != 0 && refused_by(ProviderKind::Azure) & OTHER == 0);
    }
}
