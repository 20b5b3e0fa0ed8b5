//! The store's threads: `close` joins every one of them, and a runtime
//! shut down while reads are in flight breaks nothing (reads run on the
//! store's own threads, never on the runtime's). One test in a binary of
//! its own: it counts the process's threads.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use presence_core::{Meta, PresenceKey, PresenceStore, Topic};
use presence_sqlite::{SqliteConfig, SqliteStore};

/// The process's threads named by this crate (Linux shows the first 15
/// bytes of a name: `presence-sqlite`).
fn store_threads() -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("presence-sqlit"))
        .count()
}

#[test]
fn threads_end_with_close_and_survive_a_runtime_shut_down_mid_read() {
    static PANICS: AtomicUsize = AtomicUsize::new(0);
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default_hook(info);
    }));
    let linux = std::path::Path::new("/proc/self/task").exists();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("threads.db");
    let room = Topic::new("room").unwrap();
    let first = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let store = Arc::new(
        first
            .block_on(SqliteStore::open(SqliteConfig::file(&path)))
            .unwrap(),
    );
    if linux {
        // The writer, the checkpointer and four readers.
        assert_eq!(store_threads(), 6);
    }
    first.block_on(async {
        for i in 0..200 {
            let key = PresenceKey::new("room", format!("m{i}"), "c").unwrap();
            store.join(&key, Meta::new()).await.unwrap();
        }
    });
    // Tasks reading without pause; the runtime goes away under them.
    for _ in 0..32 {
        let (store, room) = (store.clone(), room.clone());
        first.spawn(async move {
            loop {
                assert_eq!(store.members(&room).await.unwrap().len(), 200);
            }
        });
    }
    std::thread::sleep(Duration::from_millis(200));
    first.shutdown_timeout(Duration::from_secs(10));

    let second = tokio::runtime::Runtime::new().unwrap();
    second.block_on(async {
        assert_eq!(store.members(&room).await.unwrap().len(), 200);
        assert_eq!(store.count(&room).await.unwrap().members, 200);
        store.close().await.unwrap();
    });
    if linux {
        assert_eq!(store_threads(), 0, "close joined every thread");
    }
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "something panicked");
}
