//! Placeholder values that satisfy a JSON schema: what the mock answers
//! when a request forces a tool call or asks for a structured response.

use serde_json::{json, Map, Value};

/// How deep nested schemas (and `$ref`s) are followed.
const MAX_DEPTH: usize = 12;

/// A value valid for `schema`: every property present, strings `"mock"`
/// (or a value of their `format`), numbers at their minimum or 1, the first
/// `enum` value, one array item (or `minItems`), the first non-null option
/// of `anyOf`/`oneOf`. Local `$ref`s (`#/$defs/X`) are followed.
pub fn sample(schema: &Value) -> Value {
    value(schema, schema, 0)
}

fn value(s: &Value, root: &Value, depth: usize) -> Value {
    let Some(obj) = s.as_object() else {
        return json!("mock");
    };
    if depth > MAX_DEPTH {
        return Value::Null;
    }
    if let Some(target) = obj.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix('#')) {
        return root.pointer(target).map_or(Value::Null, |t| value(t, root, depth + 1));
    }
    if let Some(c) = obj.get("const") {
        return c.clone();
    }
    if let Some(first) = obj.get("enum").and_then(Value::as_array).and_then(|e| e.first()) {
        return first.clone();
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(options) = obj.get(key).and_then(Value::as_array) {
            let option = options.iter().find(|o| o.get("type").and_then(Value::as_str) != Some("null"));
            if let Some(o) = option.or(options.first()) {
                return value(o, root, depth + 1);
            }
        }
    }
    let ty = match obj.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(Value::Array(types)) => types.iter().filter_map(Value::as_str).find(|t| *t != "null").unwrap_or("null"),
        _ if obj.contains_key("properties") => "object",
        _ if obj.contains_key("items") => "array",
        _ => "string",
    };
    match ty {
        "object" => {
            let props = obj.get("properties").and_then(Value::as_object);
            let out: Map<String, Value> =
                props.into_iter().flatten().map(|(name, p)| (name.clone(), value(p, root, depth + 1))).collect();
            Value::Object(out)
        }
        "array" => {
            let n = obj.get("minItems").and_then(Value::as_u64).unwrap_or(1).max(1);
            let item = obj.get("items").map_or(json!("mock"), |i| value(i, root, depth + 1));
            Value::Array((0..n).map(|_| item.clone()).collect())
        }
        "integer" => json!(obj.get("minimum").and_then(Value::as_i64).unwrap_or(1)),
        "number" => json!(obj.get("minimum").and_then(Value::as_f64).unwrap_or(1.5)),
        "boolean" => json!(true),
        "null" => Value::Null,
        _ => json!(match obj.get("format").and_then(Value::as_str) {
            Some("date-time") => "2025-01-01T00:00:00Z",
            Some("date") => "2025-01-01",
            Some("time") => "00:00:00",
            Some("email") => "mock@example.com",
            Some("uri") => "https://example.com/mock",
            Some("uuid") => "00000000-0000-4000-8000-000000000000",
            _ => "mock",
        }),
    }
}

/// The reply text of a request in JSON mode: a value of `schema` (OpenAI's
/// `response_format.json_schema.schema`, Gemini's `responseSchema`) when
/// there is one, else `{"reply": reply}`.
pub fn reply_json(schema: Option<&Value>, reply: &str) -> String {
    match schema {
        Some(s) if s.is_object() && s.as_object().is_some_and(|o| !o.is_empty()) => sample(s).to_string(),
        _ => json!({ "reply": reply }).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pydantic_shapes() {
        let schema = json!({
            "$defs": {"Stop": {"properties": {"city": {"type": "string"}, "days": {"type": "integer"}}, "type": "object"}},
            "properties": {
                "name": {"type": "string"},
                "when": {"type": "string", "format": "date"},
                "score": {"type": "number"},
                "ok": {"type": "boolean"},
                "tags": {"items": {"type": "string"}, "type": "array"},
                "stops": {"items": {"$ref": "#/$defs/Stop"}, "type": "array", "minItems": 2},
                "note": {"anyOf": [{"type": "null"}, {"type": "string"}]},
                "kind": {"enum": ["a", "b"], "type": "string"},
                "fixed": {"const": 3}
            },
            "required": ["name"],
            "type": "object"
        });
        assert_eq!(
            sample(&schema),
            json!({
                "name": "mock", "when": "2025-01-01", "score": 1.5, "ok": true, "tags": ["mock"],
                "stops": [{"city": "mock", "days": 1}, {"city": "mock", "days": 1}],
                "note": "mock", "kind": "a", "fixed": 3
            })
        );
    }

    #[test]
    fn recursion_is_bounded() {
        let schema = json!({"$defs": {"N": {"type": "object", "properties": {"next": {"$ref": "#/$defs/N"}}}}, "$ref": "#/$defs/N"});
        assert!(sample(&schema).is_object());
    }

    #[test]
    fn json_mode_without_schema_answers_an_object() {
        assert_eq!(reply_json(None, "hi"), r#"{"reply":"hi"}"#);
        assert_eq!(
            reply_json(Some(&json!({"type": "object", "properties": {"a": {"type": "integer"}}})), "hi"),
            r#"{"a":1}"#
        );
    }
}
