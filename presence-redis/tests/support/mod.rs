//! The conformance suite's backend for Redis, shared by the single-server
//! and the cluster test files.

use std::sync::Arc;

use conformance::{Backend, Damage, Setup};
use presence_core::{PresenceKey, PresenceStore, Timestamp, Topic};
use presence_redis::{RedisStore, testing};

/// Opens stores on the shared test server, or on the shared cluster.
pub struct Redis {
    /// Whether the stores run on the cluster.
    pub cluster: bool,
    /// The stores' `sweep_piece`, when not the default.
    pub sweep_piece: Option<usize>,
}

struct Damaged(RedisStore);

#[async_trait::async_trait]
impl Damage for Damaged {
    async fn corrupt_meta(&self, key: &PresenceKey) {
        testing::damage::corrupt_meta(&self.0, key).await;
    }

    async fn plant_invalid_ids(&self, topic: &Topic, last_seen_at: Timestamp) {
        testing::damage::plant_invalid_ids(&self.0, topic, last_seen_at).await;
    }
}

async fn open(backend: &Redis, setup: &Setup) -> RedisStore {
    let mut config = if backend.cluster {
        testing::cluster_config("cluster")
    } else {
        testing::store_config("conf")
    };
    config.max_meta_bytes = setup.max_meta_bytes;
    config.event_buffer = setup.event_buffer;
    config.clock = Arc::new(setup.clock.clone());
    if let Some(piece) = backend.sweep_piece {
        config.sweep_piece = piece;
    }
    RedisStore::connect(config)
        .await
        .expect("connect to the test server or cluster")
}

#[async_trait::async_trait]
impl Backend for Redis {
    async fn open(&self, setup: &Setup) -> Arc<dyn PresenceStore> {
        Arc::new(open(self, setup).await)
    }

    async fn open_damaged(
        &self,
        setup: &Setup,
    ) -> Option<(Arc<dyn PresenceStore>, Box<dyn Damage>)> {
        let store = open(self, setup).await;
        Some((Arc::new(store.clone()), Box::new(Damaged(store))))
    }

    fn unavailable(&self) -> Option<String> {
        if self.cluster {
            testing::cluster_unavailable()
        } else {
            testing::unavailable()
        }
    }
}
