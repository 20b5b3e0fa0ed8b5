//! What subscriptions cost on the memory store, measured by a counting
//! allocator (a binary of its own).

use std::sync::Arc;

use conformance::{Backend, Setup};
use presence_core::PresenceStore;
use presence_memory::{MemoryConfig, MemoryStore};

struct Memory;

#[async_trait::async_trait]
impl Backend for Memory {
    async fn open(&self, setup: &Setup) -> Arc<dyn PresenceStore> {
        Arc::new(MemoryStore::with_config(MemoryConfig {
            max_meta_bytes: setup.max_meta_bytes,
            event_buffer: setup.event_buffer,
            clock: Arc::new(setup.clock.clone()),
            ..MemoryConfig::default()
        }))
    }
}

conformance::footprint_suite!(Memory);
