//! Generates a JSON value that is valid against a (practical subset of) JSON Schema.
//!
//! Supported: `type` (one type or a list, `null` chosen last), `enum`, `const`, objects
//! (`properties`, `required`; every declared property is produced), strings (`minLength`,
//! `maxLength`, a few `format`s; `pattern` is not honoured), integers and numbers (`minimum`,
//! `maximum`, `exclusiveMinimum`, `exclusiveMaximum`, `multipleOf` for integers), booleans,
//! arrays (`items`, `prefixItems`, `minItems`, `maxItems`), `anyOf`/`oneOf` (first branch),
//! `allOf` (merged object properties), and `$ref` to `#/$defs/...` or `#/definitions/...`.
//! Values are deterministic for a given generator seed. Recursion stops at a fixed depth.

use serde_json::{Map, Value, json};

use crate::prng::SplitMix64;

const MAX_DEPTH: usize = 12;
/// Longest generated string.
const MAX_STRING: usize = 4096;

/// Generates a value for `schema`, resolving `$ref` against `schema` itself.
pub(crate) fn generate(schema: &Value, seed: u64) -> Value {
    let mut generator = Generator {
        root: schema,
        rng: SplitMix64::new(seed),
    };
    generator.value(schema, "value", 0)
}

struct Generator<'a> {
    root: &'a Value,
    rng: SplitMix64,
}

impl<'a> Generator<'a> {
    fn resolve(&self, reference: &str) -> Option<&'a Value> {
        let pointer = reference.strip_prefix('#')?;
        self.root.pointer(pointer)
    }

    fn value(&mut self, schema: &Value, name: &str, depth: usize) -> Value {
        let Some(obj) = schema.as_object() else {
            // `true`, `{}` or anything unexpected: any value is valid.
            return Value::String(format!("sample {name}"));
        };
        if depth > MAX_DEPTH {
            return minimal(obj);
        }
        if let Some(reference) = obj.get("$ref").and_then(Value::as_str)
            && let Some(target) = self.resolve(reference)
        {
            return self.value(target, name, depth + 1);
        }
        if let Some(constant) = obj.get("const") {
            return constant.clone();
        }
        if let Some(choices) = obj.get("enum").and_then(Value::as_array)
            && !choices.is_empty()
        {
            let index = self.rng.range(0, choices.len() as u64 - 1) as usize;
            return choices.get(index).cloned().unwrap_or(Value::Null);
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(first) = obj
                .get(key)
                .and_then(Value::as_array)
                .and_then(|a| a.first())
            {
                return self.value(first, name, depth + 1);
            }
        }
        if let Some(parts) = obj.get("allOf").and_then(Value::as_array) {
            return self.all_of(obj, parts, name, depth);
        }
        match pick_type(obj).as_deref() {
            Some("object") => self.object(obj, depth),
            Some("array") => self.array(obj, name, depth),
            Some("string") => self.string(obj, name),
            Some("integer") => self.integer(obj),
            Some("number") => self.number(obj),
            Some("boolean") => Value::Bool(self.rng.next_u64() & 1 == 1),
            Some("null") => Value::Null,
            _ => Value::String(format!("sample {name}")),
        }
    }

    fn all_of(
        &mut self,
        obj: &Map<String, Value>,
        parts: &[Value],
        name: &str,
        depth: usize,
    ) -> Value {
        let mut merged = Map::new();
        let mut any_object = false;
        for part in parts {
            if let Value::Object(fields) = self.value(part, name, depth + 1) {
                any_object = true;
                merged.extend(fields);
            }
        }
        let mut own = obj.clone();
        own.remove("allOf");
        let own_is_object =
            own.contains_key("properties") || pick_type(&own).as_deref() == Some("object");
        if own_is_object
            && let Value::Object(fields) = self.value(&Value::Object(own), name, depth + 1)
        {
            any_object = true;
            merged.extend(fields);
        }
        if any_object {
            Value::Object(merged)
        } else {
            parts
                .first()
                .map_or(Value::Null, |first| self.value(first, name, depth + 1))
        }
    }

    fn object(&mut self, obj: &Map<String, Value>, depth: usize) -> Value {
        let mut out = Map::new();
        if let Some(props) = obj.get("properties").and_then(Value::as_object) {
            for (key, sub) in props {
                let value = self.value(sub, key, depth + 1);
                out.insert(key.clone(), value);
            }
        }
        if let Some(required) = obj.get("required").and_then(Value::as_array) {
            for key in required.iter().filter_map(Value::as_str) {
                if !out.contains_key(key) {
                    out.insert(key.to_string(), Value::String(format!("sample {key}")));
                }
            }
        }
        let min = obj
            .get("minProperties")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let mut extra = 0;
        while (out.len() as u64) < min && extra < 64 {
            extra += 1;
            let value = match obj.get("additionalProperties") {
                Some(sub @ Value::Object(_)) => self.value(sub, "extra", depth + 1),
                _ => Value::String("extra".to_string()),
            };
            out.insert(format!("extra_{extra}"), value);
        }
        Value::Object(out)
    }

    fn array(&mut self, obj: &Map<String, Value>, name: &str, depth: usize) -> Value {
        let min = obj.get("minItems").and_then(Value::as_u64).unwrap_or(0);
        let max = obj
            .get("maxItems")
            .and_then(Value::as_u64)
            .unwrap_or(u64::MAX);
        let mut out = Vec::new();
        let prefix = obj.get("prefixItems").and_then(Value::as_array);
        if let Some(prefix) = prefix {
            for sub in prefix.iter().take(max.min(64) as usize) {
                out.push(self.value(sub, name, depth + 1));
            }
        }
        let want = min.max(1).min(max).min(64) as usize;
        let items = obj.get("items");
        while out.len() < want {
            let value = match items {
                Some(sub) => self.value(sub, name, depth + 1),
                None => Value::String(format!("sample {name}")),
            };
            out.push(value);
        }
        if obj.get("uniqueItems").and_then(Value::as_bool) == Some(true) {
            out.dedup();
            if (out.len() as u64) < min {
                // Cannot guarantee uniqueness for every item schema; keep what we have.
            }
        }
        Value::Array(out)
    }

    fn string(&mut self, obj: &Map<String, Value>, name: &str) -> Value {
        let min = obj.get("minLength").and_then(Value::as_u64).unwrap_or(0) as usize;
        let max = obj
            .get("maxLength")
            .and_then(Value::as_u64)
            .map_or(usize::MAX, |m| m as usize);
        let tag = self.rng.next_u64() % 10_000;
        let base = match obj.get("format").and_then(Value::as_str) {
            Some("date-time") => "2025-01-01T00:00:00Z".to_string(),
            Some("date") => "2025-01-01".to_string(),
            Some("time") => "12:00:00Z".to_string(),
            Some("email") => format!("user{tag}@example.com"),
            Some("uri" | "url") => format!("https://example.com/{tag}"),
            Some("uuid") => format!("00000000-0000-4000-8000-{tag:012}"),
            Some("ipv4") => "192.0.2.1".to_string(),
            _ => format!("{} {tag}", name.replace(['\n', '\r'], " ")),
        };
        // Absurd minimum lengths are capped so a hostile schema cannot exhaust memory.
        let min = min.min(MAX_STRING);
        let mut text: String = base.chars().take(max).collect();
        let have = text.chars().count();
        if have < min {
            text.extend(std::iter::repeat_n('x', min - have));
        }
        Value::String(text)
    }

    fn integer(&mut self, obj: &Map<String, Value>) -> Value {
        let mut low = obj.get("minimum").and_then(Value::as_f64).map(f64::ceil);
        if let Some(x) = obj.get("exclusiveMinimum").and_then(Value::as_f64) {
            let v = x.floor() + 1.0;
            low = Some(low.map_or(v, |l| l.max(v)));
        }
        let mut high = obj.get("maximum").and_then(Value::as_f64).map(f64::floor);
        if let Some(x) = obj.get("exclusiveMaximum").and_then(Value::as_f64) {
            let v = x.ceil() - 1.0;
            high = Some(high.map_or(v, |h| h.min(v)));
        }
        let low = low.unwrap_or(0.0).clamp(-9.0e15, 9.0e15) as i64;
        let high = high.unwrap_or(low as f64 + 100.0).clamp(-9.0e15, 9.0e15) as i64;
        let high = high.max(low);
        let span = (high - low) as u64;
        let mut value = low + self.rng.range(0, span) as i64;
        if let Some(step) = obj.get("multipleOf").and_then(Value::as_i64)
            && step > 0
        {
            let candidate = value - value.rem_euclid(step);
            let up = candidate + step;
            value = if candidate >= low {
                candidate
            } else if up <= high {
                up
            } else {
                value
            };
        }
        json!(value)
    }

    fn number(&mut self, obj: &Map<String, Value>) -> Value {
        let low = obj
            .get("minimum")
            .or_else(|| obj.get("exclusiveMinimum"))
            .and_then(Value::as_f64)
            .unwrap_or(0.0);
        let high = obj
            .get("maximum")
            .or_else(|| obj.get("exclusiveMaximum"))
            .and_then(Value::as_f64)
            .unwrap_or(low + 100.0)
            .max(low);
        // Strictly inside the range so exclusive bounds hold; exact bound when the range is empty.
        let value = if high > low {
            let f = 0.1 + 0.8 * self.rng.next_f64();
            let v = low + (high - low) * f;
            (v * 100.0).round() / 100.0
        } else {
            low
        };
        let value = if value > low && value < high || high <= low {
            value
        } else {
            (low + high) / 2.0
        };
        serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number)
    }
}

/// The type to generate: the first non-null entry of a type list, else null; inferred from
/// `properties` / `items` when `type` is absent.
fn pick_type(obj: &Map<String, Value>) -> Option<String> {
    match obj.get("type") {
        Some(Value::String(t)) => Some(t.clone()),
        Some(Value::Array(types)) => {
            let names: Vec<&str> = types.iter().filter_map(Value::as_str).collect();
            names
                .iter()
                .find(|t| **t != "null")
                .or(names.first())
                .map(|t| (*t).to_string())
        }
        _ if obj.contains_key("properties") => Some("object".to_string()),
        _ if obj.contains_key("items") => Some("array".to_string()),
        _ => None,
    }
}

/// The smallest value when recursion is too deep.
fn minimal(obj: &Map<String, Value>) -> Value {
    let allows = |t: &str| match obj.get("type") {
        Some(Value::String(s)) => s == t,
        Some(Value::Array(list)) => list.iter().any(|v| v.as_str() == Some(t)),
        _ => false,
    };
    if allows("null") {
        Value::Null
    } else if allows("array") {
        json!([])
    } else if allows("string") {
        json!("")
    } else if allows("integer") || allows("number") {
        json!(0)
    } else if allows("boolean") {
        json!(false)
    } else {
        json!({})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_with_everything() {
        let schema = json!({
            "type": "object",
            "properties": {
                "city": {"type": "string", "minLength": 3, "maxLength": 40},
                "unit": {"type": "string", "enum": ["c", "f"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
                "score": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
                "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
                "maybe": {"type": ["null", "boolean"]},
                "kind": {"anyOf": [{"type": "integer", "minimum": 5}, {"type": "string"}]},
                "node": {"$ref": "#/$defs/node"}
            },
            "required": ["city", "unit"],
            "$defs": {"node": {"type": "object", "properties": {"child": {"$ref": "#/$defs/node"}}}}
        });
        let v = generate(&schema, 1);
        let city = v["city"].as_str().unwrap_or_default();
        assert!(city.len() >= 3 && city.len() <= 40);
        assert!(["c", "f"].contains(&v["unit"].as_str().unwrap_or_default()));
        let days = v["days"].as_i64().unwrap_or(0);
        assert!((1..=7).contains(&days));
        let score = v["score"].as_f64().unwrap_or(0.0);
        assert!(score > 0.0 && score < 1.0);
        assert_eq!(v["tags"].as_array().map(Vec::len), Some(2));
        assert!(v["maybe"].is_boolean());
        assert!(v["kind"].as_i64().unwrap_or(0) >= 5);
        assert!(v["node"].is_object());
        assert_eq!(generate(&schema, 1), v);
    }
}
