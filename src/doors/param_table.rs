//! docs/parameters.md's tables, rendered from `api::params::PARAMS` and the
//! doors' parameter lists: the test fails when the docs drift from the code
//! (`UPDATE_DOCS=1 cargo test -p switchboard --lib param_table` rewrites them).
//! Native only: the wasm test runner has no filesystem.
#![cfg(not(target_arch = "wasm32"))]

use switchboard_schema::ProviderKind;

use super::{DoorParams, MESSAGES_PARAMS, NATIVE, RESPONSES_PARAMS, SAME};
use crate::api::params::{kind_bit, PARAMS};

const KINDS: [ProviderKind; 6] = [
    ProviderKind::Openai,
    ProviderKind::Azure,
    ProviderKind::OpenaiCompatible,
    ProviderKind::Anthropic,
    ProviderKind::Gemini,
    ProviderKind::Bedrock,
];

/// What anthropic, gemini and bedrock members get for a chat parameter they take.
const TARGETS: [(&str, [&str; 3]); 25] = [
    ("messages", ["`messages`, `system`", "`contents`, `systemInstruction`", "`messages`, `system`"]),
    ("stream", ["`stream`", "`:streamGenerateContent`", "`/converse-stream`"]),
    ("max_tokens", ["`max_tokens`", "`generationConfig.maxOutputTokens`", "`inferenceConfig.maxTokens`"]),
    ("max_completion_tokens", ["`max_tokens`", "`generationConfig.maxOutputTokens`", "`inferenceConfig.maxTokens`"]),
    (
        "temperature",
        ["`temperature` (at most 1)", "`generationConfig.temperature`", "`inferenceConfig.temperature` (at most 1)"],
    ),
    ("top_p", ["`top_p`", "`generationConfig.topP`", "`inferenceConfig.topP`"]),
    ("stop", ["`stop_sequences`", "`generationConfig.stopSequences`", "`inferenceConfig.stopSequences`"]),
    ("tools", ["`tools`", "`tools.functionDeclarations`", "`toolConfig.tools`"]),
    ("tool_choice", ["`tool_choice`", "`toolConfig.functionCallingConfig`", "`toolConfig.toolChoice`"]),
    ("response_format", ["a forced tool", "`responseMimeType`, `responseSchema`", "a forced tool"]),
    ("top_k", ["`top_k`", "`generationConfig.topK`", "`additionalModelRequestFields.top_k`"]),
    ("n", ["", "`generationConfig.candidateCount`", ""]),
    ("seed", ["", "`generationConfig.seed`", ""]),
    ("presence_penalty", ["", "`generationConfig.presencePenalty`", ""]),
    ("frequency_penalty", ["", "`generationConfig.frequencyPenalty`", ""]),
    ("parallel_tool_calls", ["`tool_choice.disable_parallel_tool_use`", "", ""]),
    ("user", ["`metadata.user_id`", "", ""]),
    ("thinking", ["`thinking`", "`generationConfig.thinkingConfig`", "`additionalModelRequestFields.thinking`"]),
    (
        "reasoning_effort",
        ["`thinking`", "`generationConfig.thinkingConfig`", "`additionalModelRequestFields.thinking`"],
    ),
    ("cache_control", ["`cache_control`", NO_OP, "a `cachePoint` after the last block"]),
    ("stop>4", ["`stop_sequences`", "`generationConfig.stopSequences`", "`inferenceConfig.stopSequences`"]),
    ("stop>5", ["`stop_sequences`", "", "`inferenceConfig.stopSequences`"]),
    ("stop>2500", ["`stop_sequences`", "", ""]),
    (
        "anthropic-beta",
        ["the `anthropic-beta` header", "", "`additionalModelRequestFields.anthropic_beta` (Claude models)"],
    ),
    ("output_config", ["`output_config`", "", "`additionalModelRequestFields.output_config` (Claude models)"]),
];

/// A table row's parameter: `stop>4` is `stop` beyond 4 sequences.
fn shown(name: &str) -> String {
    match name.split_once('>') {
        Some((base, limit)) => format!("`{base}`, more than {limit} sequences"),
        None => format!("`{name}`"),
    }
}

/// What kinds that cache prompts by themselves make of a cache breakpoint:
/// its meaning (cache this prefix) is kept without it.
const NO_OP: &str = "translated: marks taken out (caches prefixes by itself)";

const REFUSED: &str = "refused";

/// A chat parameter's fate on a member of `kind`.
fn fate(name: &str, kind: ProviderKind) -> String {
    let Some((_, kinds)) = PARAMS.iter().find(|(n, _)| *n == name) else {
        return if kind_bit(kind) & 0b111 != 0 { "as is".into() } else { REFUSED.into() };
    };
    let takes = kinds & kind_bit(kind) != 0;
    let gateway = kinds & 0x80 != 0;
    let slot = match kind {
        ProviderKind::Anthropic => 0,
        ProviderKind::Gemini => 1,
        ProviderKind::Bedrock => 2,
        _ if matches!(name, "model" | "provider" | "fallback" | "fallback_models" | "load_balance_group") => {
            return "gateway".into()
        }
        ProviderKind::Openai | ProviderKind::Azure if name == "thinking" => return "`reasoning_effort`".into(),
        ProviderKind::Openai | ProviderKind::Azure if name == "cache_control" => return NO_OP.into(),
        _ => return if takes { "as is".into() } else { REFUSED.into() },
    };
    let target = TARGETS.iter().find(|(n, _)| *n == name).map_or("", |(_, t)| t[slot]);
    let target = if gateway && target.is_empty() { "gateway" } else { target };
    assert_eq!(takes, !target.is_empty(), "{name} on {kind:?}: the table and its docs disagree");
    if takes {
        target.to_string()
    } else {
        REFUSED.into()
    }
}

fn header() -> String {
    let kinds: Vec<&str> = KINDS.iter().map(|k| k.as_str()).collect();
    format!("| parameter | {} |\n|---|{}\n", kinds.join(" | "), "---|".repeat(KINDS.len()))
}

fn chat_table() -> String {
    let mut out = header();
    for (name, _) in PARAMS.iter() {
        let cells: Vec<String> = KINDS.iter().map(|k| fate(name, *k)).collect();
        out.push_str(&format!("| {} | {} |\n", shown(name), cells.join(" | ")));
    }
    let cells: Vec<String> = KINDS.iter().map(|k| fate("(any other)", *k)).collect();
    out.push_str(&format!("| any other | {} |\n", cells.join(" | ")));
    out
}

/// `headers`: request headers the door reads as a chat parameter of the same name.
fn door_table(params: &DoorParams, headers: &[&'static str], native: u8) -> String {
    let mut out = header().replacen("| parameter |", "| parameter | chat body |", 1).replacen("|---|", "|---|---|", 1);
    for header in headers {
        let cells: Vec<String> = KINDS
            .iter()
            .map(|k| if kind_bit(*k) & native != 0 { "as is (native)".into() } else { fate(header, *k) })
            .collect();
        out.push_str(&format!("| the `{header}` header | `{header}` | {} |\n", cells.join(" | ")));
    }
    for (door, chat) in params.iter().chain([("any other", NATIVE)].iter()) {
        let chat_name = if *chat == SAME { door } else { chat };
        let cells: Vec<String> = KINDS
            .iter()
            .map(|k| match () {
                _ if kind_bit(*k) & native != 0 => "as is (native)".into(),
                _ if *chat == NATIVE => REFUSED.into(),
                _ => fate(chat_name, *k),
            })
            .collect();
        let shown_door = if *door == "any other" { door.to_string() } else { format!("`{door}`") };
        let shown_chat = if *chat == NATIVE { "-".to_string() } else { format!("`{chat_name}`") };
        out.push_str(&format!("| {shown_door} | {shown_chat} | {} |\n", cells.join(" | ")));
    }
    out
}

fn tables() -> String {
    let messages = kind_bit(ProviderKind::Anthropic);
    let responses = kind_bit(ProviderKind::Openai) | kind_bit(ProviderKind::Azure);
    format!(
        "### Chat completions (`POST /v1/chat/completions`)\n\n{}\n### Messages (`POST /v1/messages`)\n\n{}\n### Responses (`POST /v1/responses`)\n\n{}",
        chat_table(),
        door_table(MESSAGES_PARAMS, &["anthropic-beta"], messages),
        door_table(RESPONSES_PARAMS, &[], responses)
    )
}

#[test]
fn docs_parameter_tables_match_the_code() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/parameters.md");
    let doc = std::fs::read_to_string(path).unwrap_or_default();
    let (begin, end) = ("<!-- tables:begin -->\n", "<!-- tables:end -->");
    let (Some(b), Some(e)) = (doc.find(begin), doc.find(end)) else { panic!("{path} lacks the table markers") };
    let fresh = format!("{}{begin}{}{}", &doc[..b], tables(), &doc[e..]);
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::write(path, &fresh).unwrap();
    }
    assert!(
        fresh == doc,
        "docs/parameters.md is out of date: run UPDATE_DOCS=1 cargo test -p switchboard --lib param_table"
    );
}
