//! The SQLite backends the conformance suites run on: a file per store, and
//! in memory.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use conformance::{Backend, Damage, Setup};
use presence_core::{PresenceKey, PresenceStore, Timestamp, Topic};
use presence_sqlite::{SqliteConfig, SqliteStore};

fn config(mut config: SqliteConfig, setup: &Setup) -> SqliteConfig {
    config.max_meta_bytes = setup.max_meta_bytes;
    config.event_buffer = setup.event_buffer;
    config.clock = Arc::new(setup.clock.clone());
    config
}

/// A new database file per store, in one temporary directory per test.
pub struct SqliteFile {
    dir: tempfile::TempDir,
    opened: AtomicUsize,
}

impl SqliteFile {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("a temporary directory"),
            opened: AtomicUsize::new(0),
        }
    }

    async fn open_file(&self, setup: &Setup) -> (SqliteStore, PathBuf) {
        let n = self.opened.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.path().join(format!("store-{n}.db"));
        let store = SqliteStore::open(config(SqliteConfig::file(&path), setup))
            .await
            .expect("open a SQLite file store");
        (store, path)
    }
}

#[async_trait::async_trait]
impl Backend for SqliteFile {
    async fn open(&self, setup: &Setup) -> Arc<dyn PresenceStore> {
        Arc::new(self.open_file(setup).await.0)
    }

    async fn open_damaged(
        &self,
        setup: &Setup,
    ) -> Option<(Arc<dyn PresenceStore>, Box<dyn Damage>)> {
        let (store, path) = self.open_file(setup).await;
        Some((Arc::new(store), Box::new(FileDamage { path })))
    }
}

/// Writes into a store's file with a connection of its own, as a hand
/// edit, a disk fault or an older release could leave rows.
struct FileDamage {
    path: PathBuf,
}

impl FileDamage {
    async fn execute(&self, sql: &'static str, params: Vec<rusqlite::types::Value>) -> usize {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let raw = rusqlite::Connection::open(path).expect("open the file beside the store");
            raw.busy_timeout(std::time::Duration::from_secs(30))
                .unwrap();
            raw.execute(sql, rusqlite::params_from_iter(params))
                .expect("damage the file")
        })
        .await
        .unwrap()
    }
}

/// Meta text `serde_json` cannot read back: nested deeper than its limit.
fn unreadable_meta() -> String {
    format!("{}1{}", r#"{"x":"#.repeat(200), "}".repeat(200))
}

#[async_trait::async_trait]
impl Damage for FileDamage {
    async fn corrupt_meta(&self, key: &PresenceKey) {
        let changed = self
            .execute(
                "UPDATE presence_entries SET meta = ?1 \
                 WHERE topic = ?2 AND member = ?3 AND connection = ?4",
                vec![
                    unreadable_meta().into(),
                    key.topic.to_string().into(),
                    key.member.to_string().into(),
                    key.connection.to_string().into(),
                ],
            )
            .await;
        assert_eq!(changed, 1, "{key} is present");
    }

    async fn plant_invalid_ids(&self, topic: &Topic, last_seen_at: Timestamp) {
        // Through the table, so the count triggers count it as any row.
        self.execute(
            "INSERT INTO presence_entries VALUES (?1, '', '', '{}', ?2, ?2)",
            vec![topic.to_string().into(), last_seen_at.as_millis().into()],
        )
        .await;
    }
}

/// A private in-memory database per store (it cannot be reached from
/// outside the store, so it has no damaged variant).
pub struct SqliteMemory;

#[async_trait::async_trait]
impl Backend for SqliteMemory {
    async fn open(&self, setup: &Setup) -> Arc<dyn PresenceStore> {
        let store = SqliteStore::open(config(SqliteConfig::memory(), setup))
            .await
            .expect("open an in-memory SQLite store");
        Arc::new(store)
    }
}
