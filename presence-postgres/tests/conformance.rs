//! The whole conformance suite, unchanged, on Postgres: each store in a
//! schema of its own on the test server (see `presence_postgres::testing`).

use std::sync::Arc;

use conformance::{Backend, Damage, Setup};
use presence_core::{PresenceKey, PresenceStore, Timestamp, Topic};
use presence_postgres::{PostgresConfig, PostgresStore, testing};

struct Postgres;

fn config(setup: &Setup) -> PostgresConfig {
    let mut config = testing::store_config("conf");
    config.max_meta_bytes = setup.max_meta_bytes;
    config.event_buffer = setup.event_buffer;
    config.clock = Arc::new(setup.clock.clone());
    config
}

/// Writes into a store's schema behind its back, over a connection of its own.
struct Schema {
    client: tokio_postgres::Client,
    schema: String,
}

#[async_trait::async_trait]
impl Damage for Schema {
    async fn corrupt_meta(&self, key: &PresenceKey) {
        let changed = self
            .client
            .execute(
                &format!(
                    "UPDATE {}.entries SET meta = '{{\"not\": json' \
                     WHERE topic = $1 AND member = $2 AND connection = $3",
                    self.schema
                ),
                &[
                    &key.topic.as_str(),
                    &key.member.as_str(),
                    &key.connection.as_str(),
                ],
            )
            .await
            .expect("corrupt a stored meta");
        assert_eq!(changed, 1, "{key} is stored");
    }

    async fn plant_invalid_ids(&self, topic: &Topic, last_seen_at: Timestamp) {
        let s = &self.schema;
        self.client
            .batch_execute("BEGIN")
            .await
            .expect("begin planting");
        self.client
            .execute(
                &format!("INSERT INTO {s}.entries VALUES ($1, '', '', '{{}}', $2, $2)"),
                &[&topic.as_str(), &last_seen_at.as_millis()],
            )
            .await
            .expect("plant an entry with empty ids");
        self.client
            .execute(
                &format!(
                    "INSERT INTO {s}.topics AS t VALUES ($1, 1, 1) ON CONFLICT (topic) DO UPDATE \
                     SET members = t.members + 1, connections = t.connections + 1"
                ),
                &[&topic.as_str()],
            )
            .await
            .expect("count the planted entry");
        self.client
            .batch_execute("COMMIT")
            .await
            .expect("commit planting");
    }
}

#[async_trait::async_trait]
impl Backend for Postgres {
    async fn open(&self, setup: &Setup) -> Arc<dyn PresenceStore> {
        Arc::new(
            PostgresStore::connect(config(setup))
                .await
                .expect("connect to the test server"),
        )
    }

    async fn open_damaged(
        &self,
        setup: &Setup,
    ) -> Option<(Arc<dyn PresenceStore>, Box<dyn Damage>)> {
        let config = config(setup);
        let store = PostgresStore::connect(config.clone())
            .await
            .expect("connect to the test server");
        let (client, connection) = tokio_postgres::connect(&config.url, tokio_postgres::NoTls)
            .await
            .expect("a raw connection to the test server");
        tokio::spawn(connection);
        let damage = Schema {
            client,
            schema: config.schema,
        };
        Some((Arc::new(store), Box::new(damage)))
    }

    fn unavailable(&self) -> Option<String> {
        testing::unavailable()
    }
}

conformance::suite!(Postgres);
