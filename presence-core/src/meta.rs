//! Per-connection metadata: a validated JSON object.

use std::fmt;
use std::sync::{Arc, LazyLock};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::{Error, Result};

/// The default limit on a meta's serialized size, in bytes.
pub const DEFAULT_MAX_META_BYTES: usize = 4096;

/// Deeper nesting is refused; `serde_json` refuses it when parsing too, so
/// anything that arrived as JSON text passes.
const MAX_DEPTH: usize = 128;

static EMPTY: LazyLock<Map<String, Value>> = LazyLock::new(Map::new);

/// The metadata of one connection: a JSON object (`null` means `{}`), with no
/// NUL in any key or string.
///
/// Valid by construction. Its compact serialized size is computed once, when
/// it is built, so stores check [`max_meta_bytes`](Meta::check_size) without
/// serializing again. Cloning is cheap, and `{}` takes no allocation.
#[derive(Clone, Default, PartialEq)]
pub struct Meta(Option<Arc<Inner>>);

#[derive(PartialEq)]
struct Inner {
    map: Map<String, Value>,
    json_len: usize,
}

impl Meta {
    /// The empty object `{}`.
    pub fn new() -> Self {
        Self(None)
    }

    /// Validates a JSON value as meta: an object, or `null` for `{}`.
    ///
    /// ```
    /// # use presence_core::Meta;
    /// # use serde_json::json;
    /// let meta = Meta::from_value(json!({"typing": true}))?;
    /// assert_eq!(meta.get("typing"), Some(&json!(true)));
    /// assert_eq!(Meta::from_value(json!(null))?, Meta::new());
    /// assert!(Meta::from_value(json!([1, 2])).is_err());
    /// # Ok::<(), presence_core::Error>(())
    /// ```
    pub fn from_value(value: Value) -> Result<Self> {
        match value {
            Value::Null => Ok(Self::new()),
            Value::Object(map) => Self::from_map(map),
            other => Err(Error::invalid(
                "meta",
                format!("must be a JSON object or null, got {}", kind(&other)),
            )),
        }
    }

    /// Validates a JSON object as meta.
    pub fn from_map(map: Map<String, Value>) -> Result<Self> {
        if map.is_empty() {
            return Ok(Self::new());
        }
        for (key, value) in &map {
            check_no_nul(key, value, 1)?;
        }
        let json_len = serde_json::to_vec(&map)
            .map_err(|err| Error::invalid("meta", format!("cannot be serialized: {err}")))?
            .len();
        Ok(Self(Some(Arc::new(Inner { map, json_len }))))
    }

    /// Parses JSON text as meta.
    pub fn from_json(text: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(text)
            .map_err(|err| Error::invalid("meta", format!("is not valid JSON: {err}")))?;
        Self::from_value(value)
    }

    /// The object's fields.
    pub fn as_map(&self) -> &Map<String, Value> {
        match &self.0 {
            Some(inner) => &inner.map,
            None => &EMPTY,
        }
    }

    /// One field.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_map().get(key)
    }

    /// Whether this is `{}`.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// The size of the compact JSON text, in bytes (`{}` is 2).
    pub fn json_len(&self) -> usize {
        self.0.as_ref().map_or(2, |inner| inner.json_len)
    }

    /// The compact JSON text, as stored by the SQL backends.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self.as_map()).expect("a JSON map always serializes")
    }

    /// The meta as a JSON value (always an object).
    pub fn to_value(&self) -> Value {
        Value::Object(self.as_map().clone())
    }

    /// Checks the store's size limit; the error names the field `meta`.
    pub fn check_size(&self, max_meta_bytes: usize) -> Result<()> {
        let len = self.json_len();
        if len > max_meta_bytes {
            return Err(Error::invalid(
                "meta",
                format!(
                    "serializes to {len} bytes, the limit (max_meta_bytes) is {max_meta_bytes}"
                ),
            ));
        }
        Ok(())
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn check_no_nul(key: &str, value: &Value, depth: usize) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(Error::invalid(
            "meta",
            format!("is nested deeper than {MAX_DEPTH} levels"),
        ));
    }
    if key.contains('\0') {
        return Err(Error::invalid(
            "meta",
            format!("key {key:?} contains a NUL character"),
        ));
    }
    match value {
        Value::String(text) if text.contains('\0') => Err(Error::invalid(
            "meta",
            format!("the string at key {key:?} contains a NUL character"),
        )),
        Value::Array(items) => items
            .iter()
            .try_for_each(|item| check_no_nul(key, item, depth + 1)),
        Value::Object(map) => map
            .iter()
            .try_for_each(|(key, value)| check_no_nul(key, value, depth + 1)),
        _ => Ok(()),
    }
}

impl TryFrom<Value> for Meta {
    type Error = Error;
    fn try_from(value: Value) -> Result<Self> {
        Self::from_value(value)
    }
}

impl TryFrom<Map<String, Value>> for Meta {
    type Error = Error;
    fn try_from(map: Map<String, Value>) -> Result<Self> {
        Self::from_map(map)
    }
}

impl fmt::Debug for Meta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_map(), f)
    }
}

impl fmt::Display for Meta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_json())
    }
}

impl Serialize for Meta {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        self.as_map().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Meta {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Self::from_value(value).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn meta_must_be_an_object() {
        for bad in [json!(1), json!("x"), json!([]), json!(true)] {
            let err = Meta::from_value(bad).unwrap_err();
            assert_eq!(err.invalid_field(), Some("meta"));
        }
        assert!(Meta::from_value(json!(null)).unwrap().is_empty());
        assert!(Meta::from_value(json!({})).unwrap().is_empty());
    }

    #[test]
    fn meta_rejects_nul_anywhere() {
        for bad in [
            json!({"a\u{0}": 1}),
            json!({"a": "x\u{0}"}),
            json!({"a": ["ok", "x\u{0}"]}),
            json!({"a": {"b\u{0}": 1}}),
        ] {
            let err = Meta::from_value(bad).unwrap_err();
            assert_eq!(err.invalid_field(), Some("meta"), "{err}");
            assert!(err.to_string().contains("NUL"));
        }
    }

    #[test]
    fn meta_size_is_the_compact_json_length() {
        let meta = Meta::from_value(json!({"k": "v"})).unwrap();
        assert_eq!(meta.json_len(), r#"{"k":"v"}"#.len());
        assert_eq!(Meta::new().json_len(), 2);
        assert!(meta.check_size(9).is_ok());
        let err = meta.check_size(8).unwrap_err();
        assert!(err.to_string().contains("max_meta_bytes"));
    }

    #[test]
    fn meta_refuses_pathological_nesting() {
        let mut value = json!(1);
        for _ in 0..200 {
            value = json!({ "x": value });
        }
        assert!(Meta::from_value(value).is_err());
    }
}
