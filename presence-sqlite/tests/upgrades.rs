//! Opening a database an older release of this crate left: the schema is
//! upgraded in place and the data kept. Needs the `testing` feature (the
//! crate's own tests turn it on).

use presence_core::{PresenceKey, PresenceStore, Topic};
use presence_sqlite::{SCHEMA_VERSION, SqliteConfig, SqliteStore};

fn key(topic: &str, member: &str, connection: &str) -> PresenceKey {
    PresenceKey::new(topic, member, connection).unwrap()
}

async fn open(path: &std::path::Path) -> SqliteStore {
    SqliteStore::open(SqliteConfig::file(path)).await.unwrap()
}

#[tokio::test]
async fn an_older_file_is_upgraded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    presence_sqlite::testing::create_schema_at(&path, "presence_", 1).unwrap();
    // Rows an older release wrote, before per-topic counts existed.
    let raw = rusqlite::Connection::open(&path).unwrap();
    for (member, connection) in [("alice", "a"), ("alice", "b"), ("bob", "a")] {
        raw.execute(
            "INSERT INTO presence_entries VALUES ('room', ?1, ?2, '{}', 5, 7)",
            [member, connection],
        )
        .unwrap();
    }
    drop(raw);

    let store = open(&path).await;
    let room = Topic::new("room").unwrap();
    let counts = store.count(&room).await.unwrap();
    assert_eq!(
        (counts.members, counts.connections),
        (2, 3),
        "counts backfilled"
    );
    assert_eq!(store.members(&room).await.unwrap().len(), 2);
    store.leave(&key("room", "bob", "a")).await.unwrap();
    assert_eq!(
        store.count(&room).await.unwrap().members,
        1,
        "and kept from then on"
    );
    let raw = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = raw
        .query_row("SELECT version FROM presence_schema_version", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION as i64);
}
