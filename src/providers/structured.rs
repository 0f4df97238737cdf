//! Structured outputs for providers without OpenAI's `response_format`.
//!
//! Anthropic and Bedrock get a `json_schema` format as one more tool, the
//! *structured-output tool*, whose input schema is the format's schema and
//! which the tool choice forces; its arguments are the answer. The tool has
//! a fixed name because the `ResponseAdapter` is made without the request:
//! the name alone marks the call whose arguments become the message
//! `content` (and whose argument deltas become content deltas). Clients may
//! not declare a tool of that name on translated kinds.
//!
//! `json_object` has no schema to force: those providers get a system
//! instruction to answer with a JSON object.

use serde_json::{Map, Value};

/// Name of the structured-output tool.
pub(super) const STRUCTURED_OUTPUT_TOOL: &str = "json_schema_response";

/// The system instruction sent for `response_format: {"type": "json_object"}`.
pub(super) const JSON_OBJECT_INSTRUCTION: &str =
    "Answer with a single valid JSON object and nothing else: no prose and no Markdown code fences.";

/// How deep `$ref`s are followed; recursive schemas end in a plain object.
const MAX_REF_DEPTH: usize = 8;

/// `schema` with its local `$ref`s (`#/$defs/X`, `#/definitions/X`)
/// replaced by what they point to, and `$defs`/`definitions` dropped: for
/// providers whose schema dialect has no references (Gemini).
pub(super) fn inline_refs(schema: &Value) -> Value {
    inline(schema, schema, 0)
}

fn resolve<'s>(root: &'s Value, reference: &str) -> Option<&'s Value> {
    let pointer = reference.strip_prefix('#')?;
    root.pointer(pointer)
}

fn inline(v: &Value, root: &Value, depth: usize) -> Value {
    match v {
        Value::Object(obj) => {
            if let Some(reference) = obj.get("$ref").and_then(Value::as_str) {
                let target = resolve(root, reference).filter(|_| depth < MAX_REF_DEPTH);
                let mut out = match target.map(|t| inline(t, root, depth + 1)) {
                    Some(Value::Object(resolved)) => resolved,
                    _ => {
                        let mut object = Map::new();
                        object.insert("type".to_string(), Value::from("object"));
                        object
                    }
                };
                // Siblings of `$ref` (a description, say) win over the target's.
                for (k, val) in obj {
                    if k != "$ref" {
                        out.insert(k.clone(), inline(val, root, depth));
                    }
                }
                return Value::Object(out);
            }
            // Inserts, not `collect`: a map's collect sorts, a stable sort's code per call site.
            let mut out = Map::new();
            for (k, val) in obj {
                if k != "$defs" && k != "definitions" {
                    out.insert(k.clone(), inline(val, root, depth));
                }
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(|i| inline(i, root, depth)).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {

    use serde_json::json;

    use super::*;

    #[test]
    fn refs_are_inlined_and_definitions_dropped() {
        // The shape pydantic gives a model with a nested model and a list of them.
        let schema = json!({
            "$defs": {"Step": {"properties": {"n": {"type": "integer"}}, "required": ["n"], "type": "object"}},
            "properties": {
                "first": {"$ref": "#/$defs/Step", "description": "the first step"},
                "steps": {"items": {"$ref": "#/$defs/Step"}, "type": "array"}
            },
            "required": ["first", "steps"],
            "type": "object"
        });
        let step = json!({"properties": {"n": {"type": "integer"}}, "required": ["n"], "type": "object"});
        let mut first = step.clone();
        first["description"] = json!("the first step");
        assert_eq!(
            inline_refs(&schema),
            json!({
                "properties": {"first": first, "steps": {"items": step, "type": "array"}},
                "required": ["first", "steps"],
                "type": "object"
            })
        );
    }

    #[test]
    fn recursive_and_unknown_refs_end_in_objects() {
        let schema = json!({
            "definitions": {"Node": {"type": "object", "properties": {"next": {"$ref": "#/definitions/Node"}}}},
            "$ref": "#/definitions/Node"
        });
        let mut v = inline_refs(&schema);
        for _ in 0..MAX_REF_DEPTH {
            v = v["properties"]["next"].clone();
        }
        assert_eq!(v, json!({"type": "object"}));
        assert_eq!(inline_refs(&json!({"$ref": "https://elsewhere"})), json!({"type": "object"}));
    }
}
