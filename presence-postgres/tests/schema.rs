//! Creating and upgrading the store's schema: concurrent start-up, upgrades
//! of older schemas with their data, refusal of newer ones.
#![cfg(feature = "testing")]

use std::sync::Arc;

use presence_core::{Meta, PresenceKey, PresenceStore, Topic};
use presence_postgres::{PostgresConfig, PostgresStore, SCHEMA_VERSION, testing};

fn key(topic: &str, member: &str, connection: &str) -> PresenceKey {
    PresenceKey::new(topic, member, connection).unwrap()
}

/// The server, or `None` after saying why the test is skipped.
fn server() -> Option<String> {
    if let Some(why) = testing::unavailable() {
        eprintln!("SKIPPED: {why}");
        return None;
    }
    testing::server_url()
}

fn config(url: &str, schema: &str) -> PostgresConfig {
    let mut config = PostgresConfig::new(url);
    config.schema = schema.to_owned();
    config.pool_size = 2;
    config
}

async fn version(url: &str, schema: &str) -> i32 {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let rows = client
        .query(&format!("SELECT version FROM {schema}.schema_version"), &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "one version row");
    rows[0].get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_stores_starting_at_once_create_the_schema_once() {
    let Some(url) = server() else { return };
    let schema = testing::unique_schema("start");
    let opens = (0..10).map(|_| PostgresStore::connect(config(&url, &schema)));
    let stores: Vec<PostgresStore> = futures::future::try_join_all(opens).await.unwrap();
    assert_eq!(version(&url, &schema).await, SCHEMA_VERSION as i32);
    stores[0]
        .join(&key("room", "a", "c"), Meta::new())
        .await
        .unwrap();
    assert_eq!(
        stores[9]
            .count(&Topic::new("room").unwrap())
            .await
            .unwrap()
            .members,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_older_schema_is_upgraded_with_its_data() {
    let Some(url) = server() else { return };
    for old in 1..SCHEMA_VERSION {
        let schema = testing::unique_schema("upgrade");
        testing::create_schema_at(&url, &schema, old).await.unwrap();
        assert_eq!(version(&url, &schema).await, old as i32);
        // Data written by that version's own batched join.
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
            .query(
                &format!("SELECT * FROM {schema}.join_set($1, $2, $3, $4, $5)"),
                &[
                    &vec!["room", "room", "room"],
                    &vec!["alice", "alice", "bob"],
                    &vec!["c1", "c2", "c1"],
                    &vec!["{}", "{}", "{}"],
                    &vec![1_000i64, 1_000, 1_000],
                ],
            )
            .await
            .unwrap();

        let store: Arc<dyn PresenceStore> =
            Arc::new(PostgresStore::connect(config(&url, &schema)).await.unwrap());
        assert_eq!(version(&url, &schema).await, SCHEMA_VERSION as i32);
        let room = Topic::new("room").unwrap();
        let counts = store.count(&room).await.unwrap();
        assert_eq!(
            (counts.members, counts.connections),
            (2, 3),
            "from version {old}"
        );
        // The upgraded functions go on from the old data.
        let joined = store
            .join(&key("room", "bob", "c2"), Meta::new())
            .await
            .unwrap();
        assert!(!joined.first_for_member);
        let joined = store
            .join(&key("room", "carol", "c1"), Meta::new())
            .await
            .unwrap();
        assert!(joined.first_for_member);
        let counts = store.count(&room).await.unwrap();
        assert_eq!((counts.members, counts.connections), (3, 5));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_schema_is_refused_and_left_alone() {
    let Some(url) = server() else { return };
    let schema = testing::unique_schema("newer");
    let store = PostgresStore::connect(config(&url, &schema)).await.unwrap();
    store
        .join(&key("room", "a", "c"), Meta::new())
        .await
        .unwrap();
    drop(store);
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .execute(
            &format!("UPDATE {schema}.schema_version SET version = 99"),
            &[],
        )
        .await
        .unwrap();
    let err = PostgresStore::connect(config(&url, &schema))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("newer"), "{err}");
    assert_eq!(version(&url, &schema).await, 99);
    let rows = client
        .query(&format!("SELECT count(*) FROM {schema}.entries"), &[])
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, i64>(0), 1, "the data is untouched");
}
