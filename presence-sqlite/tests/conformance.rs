//! The whole conformance suite, unchanged, on SQLite: a file per store, and
//! in memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use conformance::{Backend, Setup};
use presence_core::PresenceStore;
use presence_sqlite::{SqliteConfig, SqliteStore};

fn config(mut config: SqliteConfig, setup: &Setup) -> SqliteConfig {
    config.max_meta_bytes = setup.max_meta_bytes;
    config.event_buffer = setup.event_buffer;
    config.clock = Arc::new(setup.clock.clone());
    config
}

/// A new database file per store, in one temporary directory per test.
struct SqliteFile {
    dir: tempfile::TempDir,
    opened: AtomicUsize,
}

impl SqliteFile {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("a temporary directory"),
            opened: AtomicUsize::new(0),
        }
    }
}

#[async_trait::async_trait]
impl Backend for SqliteFile {
    async fn open(&self, setup: &Setup) -> Arc<dyn PresenceStore> {
        let n = self.opened.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.path().join(format!("store-{n}.db"));
        let store = SqliteStore::open(config(SqliteConfig::file(path), setup))
            .await
            .expect("open a SQLite file store");
        Arc::new(store)
    }
}

struct SqliteMemory;

#[async_trait::async_trait]
impl Backend for SqliteMemory {
    async fn open(&self, setup: &Setup) -> Arc<dyn PresenceStore> {
        let store = SqliteStore::open(config(SqliteConfig::memory(), setup))
            .await
            .expect("open an in-memory SQLite store");
        Arc::new(store)
    }
}

mod file {
    conformance::suite!(super::SqliteFile::new());
}

mod memory {
    conformance::suite!(super::SqliteMemory);
}
