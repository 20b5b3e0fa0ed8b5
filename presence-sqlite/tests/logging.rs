//! What the SQLite store logs: commits that changed someone's presence and
//! sweeps at `debug`, heartbeats never above `trace`, and a group whose
//! transaction failed at `warn` with SQLite's cause, which the callers'
//! error keeps typed in its source chain.

use std::time::Duration;

use conformance::logs::{captured, logged};
use presence_core::{Error, Meta, PresenceKey, PresenceStore};
use presence_sqlite::{SqliteConfig, SqliteStore, rusqlite};
use tracing::Level;

/// SQLite's error code somewhere in `error`'s source chain.
fn sqlite_code(error: &Error) -> Option<rusqlite::ErrorCode> {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(sqlite) = cause.downcast_ref::<rusqlite::Error>() {
            return sqlite.sqlite_error_code();
        }
        source = cause.source();
    }
    None
}

/// Waits (at most 20 s, a bound for a broken build, not a measure) until
/// `done` holds.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {:?}",
            captured().all()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// One test: the capture is the whole binary's, and the counts below must
// not see another test's commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_sweeps_and_failures_are_logged_at_their_levels() {
    captured();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("presence.db");
    let mut config = SqliteConfig::file(&path);
    config.busy_timeout = Duration::from_millis(50);
    let store = SqliteStore::open(config).await.unwrap();
    let alice = PresenceKey::new("room", "alice", "tab").unwrap();

    store.join(&alice, Meta::new()).await.unwrap();
    // The writer logs a commit after it answered the callers.
    let commits = |level| logged(level, "presence-sqlite commit").len();
    eventually("a join's commit logged at debug", || {
        commits(Level::DEBUG) == 1
    })
    .await;

    let quiet = commits(Level::TRACE);
    for _ in 0..20 {
        assert!(store.touch(&alice).await.unwrap());
    }
    eventually("20 heartbeat commits logged at trace", || {
        commits(Level::TRACE) == quiet + 20
    })
    .await;
    assert_eq!(
        commits(Level::DEBUG),
        1,
        "no heartbeat is logged above trace"
    );
    assert!(logged(Level::TRACE, "presence-sqlite touch").len() >= 20);

    store.sweep_all(store.clock().now()).await.unwrap();
    assert!(!logged(Level::DEBUG, "presence-sqlite sweep_all").is_empty());

    // Another connection holds the file's write lock past the busy timeout.
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let bob = PresenceKey::new("room", "bob", "tab").unwrap();
    let error = store.join(&bob, Meta::new()).await.unwrap_err();
    assert!(matches!(error, Error::Backend { .. }), "{error:?}");
    assert_eq!(
        sqlite_code(&error),
        Some(rusqlite::ErrorCode::DatabaseBusy),
        "SQLite's error, typed, in the chain: {}",
        error.chain()
    );
    let warnings = logged(Level::WARN, "a group's transaction failed");
    assert!(
        warnings.iter().any(|w| w.contains("locked")),
        "the failure and its cause at warn: {warnings:?}"
    );
    other.execute_batch("ROLLBACK").unwrap();
    store.join(&bob, Meta::new()).await.unwrap();
    store.close().await.unwrap();
}
