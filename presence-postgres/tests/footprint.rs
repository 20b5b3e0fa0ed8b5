//! What idle and dropped subscriptions cost on Postgres, measured by a
//! counting allocator (a test binary of its own: one allocator per binary).

use std::sync::Arc;

use conformance::{Backend, Setup};
use presence_core::PresenceStore;
use presence_postgres::{PostgresStore, testing};

struct Postgres;

#[async_trait::async_trait]
impl Backend for Postgres {
    async fn open(&self, setup: &Setup) -> Arc<dyn PresenceStore> {
        let mut config = testing::store_config("footprint");
        config.max_meta_bytes = setup.max_meta_bytes;
        config.event_buffer = setup.event_buffer;
        config.clock = Arc::new(setup.clock.clone());
        Arc::new(
            PostgresStore::connect(config)
                .await
                .expect("connect to the test server"),
        )
    }

    fn unavailable(&self) -> Option<String> {
        testing::unavailable()
    }
}

conformance::footprint_suite!(Postgres);
