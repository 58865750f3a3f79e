//! JSON that refuses duplicate object keys, at any depth.
//!
//! `serde_json` keeps the last of repeated keys when it builds a [`Value`] or a map, so
//! `{"amount":1,"amount":9}` means 9 to us and may mean 1 to another parser (or to the
//! client's signing library): the same signed bytes would carry two amounts. Derived
//! structs already refuse a repeated field; [`StrictValue`] does the same for the parts
//! kept as free JSON (`tx`, `payload`). It is built in the same single pass as a
//! `Value`, so refusing duplicates costs one lookup per key.
//!
//! No maintained crate does only this; the visitor below mirrors `serde_json`'s own.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// The start of the error message of a repeated key (and of serde's own "duplicate
/// field"), by which a parse error is told apart.
pub const DUPLICATE_KEY: &str = "duplicate key";

/// A JSON value whose objects, at every depth, had no repeated key.
#[derive(Debug, Clone, PartialEq)]
pub struct StrictValue(pub Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // serde_json never hands out a non-finite float; `Null` mirrors `Value`'s own.
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        StrictValue::deserialize(d).map(|v| v.0)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(StrictValue(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(de::Error::custom(format_args!("{DUPLICATE_KEY} {key:?}")));
            }
            let StrictValue(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// Whether a `serde_json` error is a repeated key (ours, or a derived struct's
/// "duplicate field").
pub fn is_duplicate_key(e: &serde_json::Error) -> bool {
    let msg = e.to_string();
    msg.starts_with(DUPLICATE_KEY) || msg.starts_with("duplicate field")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Value, serde_json::Error> {
        serde_json::from_str::<StrictValue>(text).map(|v| v.0)
    }

    #[test]
    fn parses_like_serde_json_when_keys_are_unique() {
        let text = r#"{"a":[1,-2,3.5,true,null,"x",{"b":{}}],"c":{"d":18446744073709551615}}"#;
        assert_eq!(
            parse(text).unwrap(),
            serde_json::from_str::<Value>(text).unwrap()
        );
        assert_eq!(parse("7").unwrap(), Value::from(7));
    }

    #[test]
    fn refuses_a_repeated_key_at_any_depth() {
        for text in [
            r#"{"a":1,"a":2}"#,
            r#"{"a":{"b":1,"c":2,"b":1}}"#,
            r#"[{"x":[{"y":1,"y":1}]}]"#,
            r#"{"a":1,"b":2,"a":1}"#,
        ] {
            let e = parse(text).unwrap_err();
            assert!(is_duplicate_key(&e), "{text}: {e}");
        }
        // Same key in sibling objects is no repetition.
        assert!(parse(r#"[{"a":1},{"a":2}]"#).is_ok());
        // Escapes that spell the same key are the same key.
        assert!(is_duplicate_key(
            &parse(r#"{"a":1,"\u0061":2}"#).unwrap_err()
        ));
    }
}
