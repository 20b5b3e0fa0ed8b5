//! The whole conformance suite, unchanged, on a three-master Redis Cluster:
//! each store under a key prefix of its own (see `presence_redis::testing`).

use std::sync::Arc;

use conformance::{Backend, Damage, Setup};
use presence_core::{PresenceKey, PresenceStore, Timestamp, Topic};
use presence_redis::{RedisStore, testing};

struct RedisCluster;

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

async fn open(setup: &Setup) -> RedisStore {
    let mut config = testing::cluster_config("cluster");
    config.max_meta_bytes = setup.max_meta_bytes;
    config.event_buffer = setup.event_buffer;
    config.clock = Arc::new(setup.clock.clone());
    RedisStore::connect(config)
        .await
        .expect("connect to the test cluster")
}

#[async_trait::async_trait]
impl Backend for RedisCluster {
    async fn open(&self, setup: &Setup) -> Arc<dyn PresenceStore> {
        Arc::new(open(setup).await)
    }

    async fn open_damaged(
        &self,
        setup: &Setup,
    ) -> Option<(Arc<dyn PresenceStore>, Box<dyn Damage>)> {
        let store = open(setup).await;
        Some((Arc::new(store.clone()), Box::new(Damaged(store))))
    }

    fn unavailable(&self) -> Option<String> {
        testing::cluster_unavailable()
    }
}

conformance::suite!(RedisCluster);
