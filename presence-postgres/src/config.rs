use std::sync::Arc;

use presence_core::{Clock, DEFAULT_MAX_META_BYTES, Error, Result, system_clock};

/// How a [`PostgresStore`](crate::PostgresStore) connects. Plain fields;
/// start from [`PostgresConfig::new`] and change what you need.
#[derive(Clone, Debug)]
pub struct PostgresConfig {
    /// The server, as a `postgres://` URL or a key=value string.
    pub url: String,
    /// The schema that holds everything the store creates. Lowercase ASCII
    /// letters, digits and `_`, at most 48 bytes, not starting with a digit.
    pub schema: String,
    /// Connections in the pool (the event listener has one more).
    pub pool_size: usize,
    /// The largest meta accepted, serialized, in bytes.
    pub max_meta_bytes: usize,
    /// Where timestamps come from.
    pub clock: Arc<dyn Clock>,
    /// Events kept per subscribed topic for a slow subscriber.
    pub event_buffer: usize,
}

impl PostgresConfig {
    /// The defaults for the server at `url`: schema `presence`, a pool of 8.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: "presence".to_owned(),
            pool_size: 8,
            max_meta_bytes: DEFAULT_MAX_META_BYTES,
            clock: system_clock(),
            event_buffer: 1024,
        }
    }

    /// The schema name, checked: it is written into SQL as an identifier and
    /// is the name of the store's NOTIFY channel.
    pub(crate) fn checked_schema(&self) -> Result<&str> {
        let schema = self.schema.as_str();
        let valid = !schema.is_empty()
            && schema.len() <= 48
            && schema
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && !schema.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            return Err(Error::invalid(
                "schema",
                "must be 1 to 48 lowercase ASCII letters, digits or '_', not starting with a digit",
            ));
        }
        Ok(schema)
    }
}
