use std::sync::Arc;

use presence_core::{Clock, DEFAULT_MAX_META_BYTES, system_clock};

/// How a [`MemoryStore`](crate::MemoryStore) is built. Plain fields; start
/// from `Default` and change what you need.
#[derive(Clone, Debug)]
pub struct MemoryConfig {
    /// The largest meta accepted, serialized, in bytes.
    pub max_meta_bytes: usize,
    /// Events kept per subscribed topic for a slow subscriber; past this it
    /// gets `Event::Resync` instead of slowing writers.
    pub event_buffer: usize,
    /// How many independently locked shards the topics (and the member
    /// index) are split over.
    pub shards: usize,
    /// Where timestamps come from.
    pub clock: Arc<dyn Clock>,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            max_meta_bytes: DEFAULT_MAX_META_BYTES,
            event_buffer: 1024,
            shards: 64,
            clock: system_clock(),
        }
    }
}
