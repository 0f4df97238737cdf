//! What some current models take differently from the rest of their
//! provider kind, read from the model's name (the facts providers publish,
//! and the 400s clients meet without them):
//!
//! - OpenAI's reasoning models (`o1`, `o3`, `o4-mini`, the `gpt-5` family)
//!   refuse `max_tokens` ("Use 'max_completion_tokens' instead"): it is
//!   translated. `o1`/`o3`/`o4` and `gpt-5` itself (not `gpt-5-chat`, not
//!   `gpt-5.1` and later, which take sampling when they do not reason) also
//!   refuse sampling parameters other than their defaults: `temperature`,
//!   `top_p`, the penalties, `logprobs`, `top_logprobs`, `logit_bias`.
//! - Claude Opus 4.7 and later refuse `temperature`, `top_p` and `top_k`
//!   ("`temperature` is deprecated for this model") and a thinking budget:
//!   thinking is adaptive only, its depth set by `output_config.effort`.
//! - Claude 4.6 and later refuse an assistant prefill (`routing::resume`).
//! - Bedrock's models other than Claude take no Anthropic betas and no `output_config`.
//!
//! A refused parameter makes such a member unfit like one its kind refuses
//! (`api::params`, `routing::filter`): a pool routes around it, else the
//! request is a 400 naming the parameter, unless dropping is allowed.

use switchboard_schema::ProviderKind;

use super::params::named;

/// The sampling parameters OpenAI's reasoning models take only at their defaults.
const OPENAI_SAMPLING: u64 = named("temperature")
    | named("top_p")
    | named("presence_penalty")
    | named("frequency_penalty")
    | named("logprobs")
    | named("top_logprobs")
    | named("logit_bias");

/// The sampling parameters Claude Opus 4.7 and later refuse.
const CLAUDE_SAMPLING: u64 = named("temperature") | named("top_p") | named("top_k");

/// The name without a routing prefix (`openai/o3-mini`, `azure/gpt-5`); OpenAI's
/// names are lowercase (read on every request with a `max_tokens`: no copy).
fn base_name(model: &str) -> &str {
    model.rsplit('/').next().unwrap_or(model)
}

/// `o1`, `o3-mini`, `o4-mini-2025-04-16`: an `o`, a digit, then the end or a `-`.
fn o_series(name: &str) -> bool {
    let b = name.as_bytes();
    b.first() == Some(&b'o')
        && b.get(1).is_some_and(u8::is_ascii_digit)
        && b.get(2..).is_some_and(|rest| rest.first().is_none_or(|c| *c == b'-'))
}

/// Whether an OpenAI or Azure model takes `max_completion_tokens` only
/// (`max_tokens` is then sent as `max_completion_tokens`).
pub fn completion_tokens_only(kind: ProviderKind, model: &str) -> bool {
    if !matches!(kind, ProviderKind::Openai | ProviderKind::Azure) {
        return false;
    }
    let name = base_name(model);
    o_series(name) || name.starts_with("gpt-5")
}

/// Whether an OpenAI or Azure model takes sampling parameters only at their defaults.
fn fixed_sampling(name: &str) -> bool {
    let gpt5 = name == "gpt-5" || (name.starts_with("gpt-5-") && !name.starts_with("gpt-5-chat"));
    o_series(name) || gpt5
}

/// The major and minor version of a Claude model name (`claude-opus-4-7`,
/// `claude-3-5-sonnet-20241022`, `us.anthropic.claude-opus-4-6-v1`): its
/// first one- or two-digit numbers after `claude-` (dates and `v1` are not).
pub fn claude_version(model: &str) -> Option<(u32, u32)> {
    let lower = model.to_ascii_lowercase();
    let rest = lower.find("claude-").and_then(|at| lower.get(at + "claude-".len()..))?;
    let mut numbers = rest
        .split(['-', '.', '@', ':'])
        .filter(|t| (1..=2).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|t| t.parse::<u32>().ok());
    let major = numbers.next()?;
    Some((major, numbers.next().unwrap_or(0)))
}

/// Whether a Claude model (Anthropic's or Bedrock's) is an Opus of 4.7 or
/// later: no sampling parameters, adaptive thinking only.
pub fn claude_adaptive_only(kind: ProviderKind, model: &str) -> bool {
    matches!(kind, ProviderKind::Anthropic | ProviderKind::Bedrock)
        && model.to_ascii_lowercase().contains("opus")
        && claude_version(model).is_some_and(|v| v >= (4, 7))
}

/// What only Claude models take on Bedrock: Anthropic's betas and `output_config`.
const CLAUDE_ONLY: u64 = named("anthropic-beta") | named("output_config");

/// The parameters `model` of a `kind` member refuses beyond what its kind refuses.
pub fn refused_by_model(kind: ProviderKind, model: &str) -> u64 {
    match kind {
        ProviderKind::Openai | ProviderKind::Azure if fixed_sampling(base_name(model)) => OPENAI_SAMPLING,
        ProviderKind::Anthropic | ProviderKind::Bedrock if claude_adaptive_only(kind, model) => CLAUDE_SAMPLING,
        ProviderKind::Bedrock if claude_version(model).is_none() => CLAUDE_ONLY,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_reasoning_models_take_max_completion_tokens_and_default_sampling() {
        for name in ["o1", "o1-mini", "o3-mini", "o3-pro", "o4-mini-2025-04-16", "gpt-5", "gpt-5-mini", "openai/o3"] {
            assert!(completion_tokens_only(ProviderKind::Openai, name), "{name}");
            assert_eq!(refused_by_model(ProviderKind::Openai, name), OPENAI_SAMPLING, "{name}");
        }
        // Later GPT-5s take sampling when they do not reason; max_tokens stays refused.
        for name in ["gpt-5.1", "gpt-5.2-2025-12-11", "gpt-5-chat-latest"] {
            assert!(completion_tokens_only(ProviderKind::Azure, name), "{name}");
            assert_eq!(refused_by_model(ProviderKind::Azure, name), 0, "{name}");
        }
        for name in ["gpt-4o", "gpt-4.1-mini", "omni-moderation", "o", "ollama-3", "gpt-4o-2024-08-06"] {
            assert!(!completion_tokens_only(ProviderKind::Openai, name), "{name}");
            assert_eq!(refused_by_model(ProviderKind::Openai, name), 0, "{name}");
        }
        // A compatible server's model of the same name is its own business.
        assert!(!completion_tokens_only(ProviderKind::OpenaiCompatible, "o3-mini"));
        assert_eq!(refused_by_model(ProviderKind::OpenaiCompatible, "o3-mini"), 0);
    }

    #[test]
    fn claude_opus_4_7_and_later_refuse_sampling_and_think_adaptively() {
        for name in
            ["claude-opus-4-7", "claude-opus-4-8-20260601", "us.anthropic.claude-opus-4-7-v1:0", "claude-opus-5"]
        {
            assert!(claude_adaptive_only(ProviderKind::Bedrock, name), "{name}");
            assert_eq!(refused_by_model(ProviderKind::Anthropic, name), CLAUDE_SAMPLING, "{name}");
        }
        for name in ["claude-opus-4-6", "claude-sonnet-4-6", "claude-3-opus-20240229", "claude-opus-4-1", "gpt-4o"] {
            assert!(!claude_adaptive_only(ProviderKind::Anthropic, name), "{name}");
            assert_eq!(refused_by_model(ProviderKind::Anthropic, name), 0, "{name}");
        }
        assert!(!claude_adaptive_only(ProviderKind::OpenaiCompatible, "claude-opus-4-7"));
        assert_eq!(claude_version("claude-3-5-sonnet-20241022"), Some((3, 5)));
        assert_eq!(claude_version("anthropic.claude-3-haiku-20240307-v1:0"), Some((3, 0)));
        assert_eq!(claude_version("gpt-4o"), None);
    }
}
