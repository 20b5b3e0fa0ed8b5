//! How a SQLite store ends: `close` waits for what was queued and closes
//! the file; dropping never blocks the dropping thread, and the threads
//! still finish the queued work on their own.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use presence_core::{Error, Meta, PresenceKey, PresenceStore, Topic};
use presence_sqlite::{SqliteConfig, SqliteStore};

fn key(topic: &str, member: &str, connection: &str) -> PresenceKey {
    PresenceKey::new(topic, member, connection).unwrap()
}

fn stored_entries(path: &Path) -> i64 {
    let raw = rusqlite::Connection::open(path).unwrap();
    raw.busy_timeout(Duration::from_secs(30)).unwrap();
    raw.query_row("SELECT COUNT(*) FROM presence_entries", [], |r| r.get(0))
        .unwrap()
}

/// Polls `condition` for up to 30 seconds (a bound, not a speed check).
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `close` commits and answers the calls already made (here held up
/// behind another connection's lock while `close` starts), then closes
/// every connection, the write connection last: SQLite folds the WAL into
/// the file and removes it, and the calls acknowledged are all in the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_answers_queued_calls_and_closes_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("closed.db");
    let wal = dir.path().join("closed.db-wal");
    let mut acknowledged = 0;
    for round in 0..3 {
        let mut config = SqliteConfig::file(&path);
        config.busy_timeout = Duration::from_secs(60);
        let store = Arc::new(SqliteStore::open(config).await.unwrap());
        // Reads start the readers' connections too.
        store.members(&Topic::new("room").unwrap()).await.unwrap();
        let raw = rusqlite::Connection::open(&path).unwrap();
        raw.execute_batch("BEGIN IMMEDIATE").unwrap();
        let joins: Vec<_> = (0..64)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let key = key("room", &format!("m{round}-{i}"), "c");
                    store.join(&key, Meta::new()).await
                })
            })
            .collect();
        let taken = store.clone();
        eventually("the writer takes some joins", move || {
            taken.writer_stats().calls > 0
        })
        .await;
        let closing = tokio::spawn({
            let store = store.clone();
            async move { store.close().await }
        });
        let taken = store.writer_stats().calls;
        raw.execute_batch("COMMIT").unwrap();
        drop(raw);
        closing.await.unwrap().unwrap();
        let mut answered = 0;
        for join in join_all(joins).await {
            match join.unwrap() {
                Ok(_) => answered += 1,
                Err(Error::Closed { .. }) => {}
                Err(other) => panic!("a join racing close failed with {other:?}"),
            }
        }
        assert!(
            answered >= taken,
            "round {round}: the writer had taken {taken} joins, {answered} were answered"
        );
        acknowledged += answered;
        assert!(!wal.exists(), "round {round}: the WAL outlived close");
        assert!(matches!(
            store.count(&Topic::new("room").unwrap()).await,
            Err(Error::Closed { .. })
        ));
    }
    assert_eq!(stored_entries(&path), acknowledged as i64);
}

/// Dropping the last handle inside async code returns at once, even while
/// the writer is stuck behind another connection's lock (a worker thread
/// never waits for the store's threads); the writer still commits the call
/// it was given once the lock is free.
#[tokio::test(flavor = "current_thread")]
async fn dropping_in_async_code_does_not_wait_for_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dropped.db");
    let mut config = SqliteConfig::file(&path);
    config.busy_timeout = Duration::from_secs(60);
    let store = SqliteStore::open(config).await.unwrap();
    store
        .join(&key("room", "first", "c"), Meta::new())
        .await
        .unwrap();
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute_batch("BEGIN IMMEDIATE").unwrap();

    // A join whose caller gives up once the writer has taken it: the
    // writer waits for the lock with it.
    let calls = store.writer_stats().calls;
    let pending = tokio::spawn({
        let store = store.clone();
        async move { store.join(&key("room", "queued", "c"), Meta::new()).await }
    });
    let taken = store.clone();
    eventually("the writer takes the join", move || {
        taken.writer_stats().calls > calls
    })
    .await;
    pending.abort();
    assert!(pending.await.unwrap_err().is_cancelled());

    drop(store);
    // Still holding the lock here shows the drop did not wait for the
    // writer (which cannot finish before the lock is released).
    raw.execute_batch("COMMIT").unwrap();
    drop(raw);
    eventually("the queued join is committed", || {
        stored_entries(&path) == 2
    })
    .await;
    let wal = dir.path().join("dropped.db-wal");
    eventually("the dropped store closes its file", || !wal.exists()).await;
}
