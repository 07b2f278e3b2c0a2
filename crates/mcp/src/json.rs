//! Strict JSON: like `serde_json::from_slice::<Value>`, but an object with the same key twice
//! is rejected. serde_json silently keeps the last duplicate; an upstream written in another
//! language may keep the first, so a gateway that allowed duplicates could authorise one
//! tool name and forward another.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

/// Why a body is not acceptable JSON.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    #[error("the body is not valid JSON: {0}")]
    Syntax(String),
    #[error("the JSON object has the key \"{0}\" more than once; send each key once")]
    DuplicateKey(String),
}

/// Parse `bytes` as one JSON value, rejecting duplicate object keys at any depth.
pub fn parse_strict(bytes: &[u8]) -> Result<Value, JsonError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = match Strict::deserialize(&mut deserializer) {
        Ok(Strict(value)) => value,
        Err(error) => return Err(classify(error)),
    };
    deserializer.end().map_err(classify)?;
    Ok(value)
}

fn classify(error: serde_json::Error) -> JsonError {
    let text = error.to_string();
    match text.strip_prefix(DUPLICATE_PREFIX) {
        Some(rest) => {
            let key = rest.split('\u{0}').next().unwrap_or_default();
            JsonError::DuplicateKey(key.to_owned())
        }
        None => JsonError::Syntax(text),
    }
}

const DUPLICATE_PREFIX: &str = "duplicate key\u{0}";

struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("any JSON value")
    }
    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }
    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::from(value))
    }
    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::from(value))
    }
    fn visit_f64<E>(self, value: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_owned()))
    }
    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            if map.contains_key(&key) {
                return Err(de::Error::custom(format_args!("{DUPLICATE_PREFIX}{key}\u{0}")));
            }
            let Strict(value) = access.next_value()?;
            map.insert(key, value);
        }
        Ok(Value::Object(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: &str) {
        let actual = match parse_strict(input.as_bytes()) {
            Ok(value) => format!("ok {value}"),
            Err(JsonError::DuplicateKey(key)) => format!("duplicate {key}"),
            Err(JsonError::Syntax(_)) => "syntax".to_owned(),
        };
        assert_eq!(actual, expected, "input: {input}");
    }

    #[test]
    fn strict_parsing() {
        check(r#"{"a":1,"b":[1,2,{"c":null}]}"#, r#"ok {"a":1,"b":[1,2,{"c":null}]}"#);
        check(r#"{"a":1,"a":2}"#, "duplicate a");
        check(r#"{"x":{"name":"t","name":"u"}}"#, "duplicate name");
        check(r#"[{"k":1},{"k":2}]"#, r#"ok [{"k":1},{"k":2}]"#);
        check(r#"{"a":1} trailing"#, "syntax");
        check(r#"{"a":"#, "syntax");
        check("", "syntax");
        check(r#"{"\u0061":1,"a":2}"#, "duplicate a");
        check("1.5", "ok 1.5");
    }
}
