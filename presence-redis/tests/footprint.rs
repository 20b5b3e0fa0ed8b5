//! What subscriptions cost on Redis: idle ones are small, dropped ones are
//! released (the store unsubscribes a topic with its last local stream).

use std::sync::Arc;

use conformance::{Backend, Setup};
use presence_core::PresenceStore;
use presence_redis::{RedisStore, testing};

struct Redis;

#[async_trait::async_trait]
impl Backend for Redis {
    async fn open(&self, setup: &Setup) -> Arc<dyn PresenceStore> {
        let mut config = testing::store_config("footprint");
        config.event_buffer = setup.event_buffer;
        config.clock = Arc::new(setup.clock.clone());
        Arc::new(RedisStore::connect(config).await.expect("connect"))
    }

    fn unavailable(&self) -> Option<String> {
        testing::unavailable()
    }
}

conformance::footprint_suite!(Redis);
