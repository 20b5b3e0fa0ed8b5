//! Per-connection metadata: a validated JSON object.

use std::fmt;
use std::sync::{Arc, LazyLock};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::{Error, PresenceKey, Result};

/// The default limit on a meta's serialized size, in bytes.
pub const DEFAULT_MAX_META_BYTES: usize = 4096;

/// The deepest nesting of objects and arrays a meta may have, the meta
/// object itself counted as level 1.
///
/// `serde_json` reads back at most 127 levels, and a meta travels inside
/// envelopes (an event is three levels around it, a web diff six), so every
/// meta a store accepts must read back whole wherever it goes: 64 leaves
/// room for any envelope, and no presence meta needs more.
pub const MAX_META_DEPTH: usize = 64;

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
            check_value(key, value, 2)?;
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

    /// Reads meta a store wrote itself, for rows read back from storage.
    ///
    /// A stored meta that cannot be read (hand-edited, written by a version
    /// with looser rules, damaged) must not make its whole topic unreadable
    /// or stop the removal of other entries: it reads as `{}`, with a
    /// warning naming the entry (`docs/contract.md`).
    pub fn from_stored_json(text: &str, key: &PresenceKey) -> Self {
        Self::from_json(text).unwrap_or_else(|error| {
            tracing::warn!(%key, %error, "stored meta cannot be read; it reads as {{}}");
            Self::new()
        })
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

/// Checks one value found at `key`, whose nesting level (were it an object or
/// an array) would be `level`: no NUL, and not too deep.
fn check_value(key: &str, value: &Value, level: usize) -> Result<()> {
    if matches!(value, Value::Array(_) | Value::Object(_)) && level > MAX_META_DEPTH {
        return Err(Error::invalid(
            "meta",
            format!("is nested deeper than {MAX_META_DEPTH} levels (at key {key:?})"),
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
            .try_for_each(|item| check_value(key, item, level + 1)),
        Value::Object(map) => map
            .iter()
            .try_for_each(|(key, value)| check_value(key, value, level + 1)),
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

    /// `levels` objects (or arrays) nested inside each other, the outer one
    /// an object.
    fn nested(levels: usize, arrays: bool) -> Value {
        let mut value = json!(1);
        for _ in 1..levels {
            value = if arrays {
                json!([value])
            } else {
                json!({ "x": value })
            };
        }
        json!({ "x": value })
    }

    #[test]
    fn meta_refuses_pathological_nesting() {
        assert!(Meta::from_value(nested(1_000, false)).is_err());
        for arrays in [false, true] {
            assert!(Meta::from_value(nested(MAX_META_DEPTH, arrays)).is_ok());
            let err = Meta::from_value(nested(MAX_META_DEPTH + 1, arrays)).unwrap_err();
            assert_eq!(err.invalid_field(), Some("meta"));
            assert!(err.to_string().contains("64 levels"), "{err}");
        }
    }

    /// What a store accepts, every reader reads back: as stored text, and
    /// inside the deepest envelope it travels in (a leave event).
    #[test]
    fn every_accepted_meta_reads_back_inside_an_event() {
        use crate::{Departure, Entry, Event, PresenceKey, Reason, Timestamp};
        for levels in 1..=200 {
            let Ok(meta) = Meta::from_value(nested(levels, levels % 2 == 0)) else {
                assert!(levels > MAX_META_DEPTH, "{levels} levels refused");
                continue;
            };
            assert_eq!(Meta::from_json(&meta.to_json()).unwrap(), meta);
            let event = Event::Leave {
                departure: Departure {
                    entry: Entry {
                        key: PresenceKey::new("t", "m", "c").unwrap(),
                        meta: meta.clone(),
                        joined_at: Timestamp::EPOCH,
                        last_seen_at: Timestamp::EPOCH,
                    },
                    reason: Reason::Expired,
                    last_for_member: true,
                },
            };
            let text = serde_json::to_string(&event).unwrap();
            let back: Event = serde_json::from_str(&text).unwrap();
            assert_eq!(back, event, "{levels} levels");
        }
    }

    #[test]
    fn stored_meta_that_cannot_be_read_becomes_empty() {
        let key = crate::PresenceKey::new("t", "m", "c").unwrap();
        let deep = format!("{}1{}", "{\"x\":".repeat(130), "}".repeat(130));
        for bad in ["{", "[1]", "null x", deep.as_str()] {
            assert_eq!(Meta::from_stored_json(bad, &key), Meta::new(), "{bad}");
        }
        let good = Meta::from_value(json!({"a": [1, {"b": null}]})).unwrap();
        assert_eq!(Meta::from_stored_json(&good.to_json(), &key), good);
    }
}
