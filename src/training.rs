//! Training data from real traffic, for `switchboard training-data`: the call
//! log's lines of answers a learned router sent to its weak pool (with
//! `call_log_prompts` on, they carry the prompt it scored and the answer's
//! feedback id) joined with the scores `POST /v1/feedback` gave them (lines
//! with `feedback`), as the `prompt,label` CSV `make train-router` reads.
//! Native tooling: nothing in the filter calls it.

use std::collections::HashMap;

use serde_json::Value;

/// A score below this says the weak pool's answer was worse than the strong one's would have been.
pub const DEFAULT_LABEL_BELOW: f64 = 0.5;

/// What a join found.
#[derive(Debug, Default, PartialEq)]
pub struct Joined {
    /// `prompt,label` lines, header first.
    pub csv: String,
    pub rows: usize,
    /// Rows labelled 1: the weak answer scored below the threshold.
    pub weak_worse: usize,
    /// Weak answers of the router with a prompt but no score in the logs read.
    pub unscored: usize,
    /// Weak answers of the router scored, but logged without their prompt (`call_log_prompts` off).
    pub without_prompt: usize,
    /// Lines that are not JSON objects (Envoy's other access-log lines, a cut file).
    pub unreadable: usize,
}

/// Joins the call-log `lines` into training rows for `router`, whose weak pool is `weak_pool`.
pub fn join<'a>(lines: impl Iterator<Item = &'a str>, router: &str, weak_pool: &str, label_below: f64) -> Joined {
    let mut joined = Joined::default();
    let mut scores: HashMap<String, f64> = HashMap::new();
    // (feedback id, prompt): answers of the weak pool, in log order.
    let mut answers: Vec<(String, Option<String>)> = Vec::new();
    for line in lines.map(str::trim).filter(|l| !l.is_empty()) {
        let Ok(Value::Object(record)) = serde_json::from_str::<Value>(line) else {
            joined.unreadable += 1;
            continue;
        };
        if let Some(feedback) = record.get("feedback") {
            if let (Some(id), Some(score)) =
                (feedback.get("feedback_id").and_then(Value::as_str), feedback.get("score").and_then(Value::as_f64))
            {
                scores.insert(id.to_string(), score);
            }
            continue;
        }
        let is = |key: &str, want: &str| record.get(key).and_then(Value::as_str) == Some(want);
        let answered = record.get("status").and_then(Value::as_u64) == Some(200);
        if !(is("router", router) && is("rule", "learned") && is("pool", weak_pool) && answered) {
            continue;
        }
        if let Some(id) = record.get("feedback_id").and_then(Value::as_str) {
            answers.push((id.to_string(), record.get("prompt").and_then(Value::as_str).map(str::to_string)));
        }
    }
    joined.csv.push_str("prompt,label\n");
    for (id, prompt) in answers {
        match (scores.get(&id), prompt) {
            (Some(&score), Some(prompt)) => {
                let weak_worse = score < label_below;
                push_csv_field(&mut joined.csv, &prompt);
                joined.csv.push_str(if weak_worse { ",1\n" } else { ",0\n" });
                joined.rows += 1;
                joined.weak_worse += usize::from(weak_worse);
            }
            (Some(_), None) => joined.without_prompt += 1,
            (None, Some(_)) => joined.unscored += 1,
            (None, None) => {}
        }
    }
    joined
}

/// One CSV field (RFC 4180): always quoted, quotes doubled; line breaks stay inside the quotes.
fn push_csv_field(out: &mut String, value: &str) {
    out.push('"');
    out.push_str(&value.replace('"', "\"\""));
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routed(id: &str, pool: &str, prompt: Option<&str>) -> String {
        let mut line = serde_json::json!({
            "request_id": "r", "router": "smart", "rule": "learned", "pool": pool, "status": 200, "feedback_id": id,
        });
        if let Some(p) = prompt {
            line["prompt"] = p.into();
        }
        line.to_string()
    }

    fn scored(id: &str, score: f64) -> String {
        serde_json::json!({"request_id": "f", "model": null, "status": 204, "feedback": {"feedback_id": id, "score": score}})
            .to_string()
    }

    #[test]
    fn weak_answers_scored_below_the_threshold_are_weak_worse() {
        let lines = [
            routed("a", "weak", Some("Prove that \"x\" holds,\nfor all x")),
            routed("b", "weak", Some("Translate: hello")),
            routed("c", "strong", Some("strong answers are no labels")),
            routed("d", "weak", Some("never scored")),
            routed("e", "weak", None),
            scored("a", 0.0),
            scored("b", 0.9),
            scored("c", 0.0),
            scored("e", 1.0),
            "not json".to_string(),
        ];
        let joined = join(lines.iter().map(String::as_str), "smart", "weak", DEFAULT_LABEL_BELOW);
        assert_eq!(joined.csv, "prompt,label\n\"Prove that \"\"x\"\" holds,\nfor all x\",1\n\"Translate: hello\",0\n");
        assert_eq!(
            (joined.rows, joined.weak_worse, joined.unscored, joined.without_prompt, joined.unreadable),
            (2, 1, 1, 1, 1)
        );
    }

    #[test]
    fn the_call_logs_own_lines_join() {
        use crate::observe::CallRecord;
        let routed = CallRecord {
            request_id: "r1",
            router: Some("smart"),
            rule: Some("learned"),
            pool: Some("weak"),
            status: 200,
            feedback_id: Some("00ab"),
            prompt: Some("Why \"is\" the sky blue?\n"),
            ..CallRecord::default()
        };
        let scored =
            CallRecord { request_id: "r2", status: 204, feedback: Some(("00ab", "0.25")), ..CallRecord::default() };
        let lines = [String::from_utf8(routed.json()).unwrap(), String::from_utf8(scored.json()).unwrap()];
        let joined = join(lines.iter().map(String::as_str), "smart", "weak", DEFAULT_LABEL_BELOW);
        assert_eq!(joined.csv, "prompt,label\n\"Why \"\"is\"\" the sky blue?\n\",1\n");
    }

    #[test]
    fn other_routers_rules_and_failed_answers_are_left_out() {
        let mut other_router = routed("a", "weak", Some("p"));
        other_router = other_router.replace("\"smart\"", "\"other\"");
        let by_rule = routed("b", "weak", Some("p")).replace("\"learned\"", "\"code\"");
        let failed = routed("c", "weak", Some("p")).replace("200", "502");
        let lines = [other_router, by_rule, failed, scored("a", 0.0), scored("b", 0.0), scored("c", 0.0)];
        let joined = join(lines.iter().map(String::as_str), "smart", "weak", DEFAULT_LABEL_BELOW);
        assert_eq!(joined.rows, 0);
        assert_eq!(joined.csv, "prompt,label\n");
    }
}
