//! What the SQLite store promises beyond the shared contract: group commit,
//! failure isolation, safe opening and upgrading.

use std::sync::Arc;

use futures::future::join_all;
use presence_core::{Error, Event, Meta, PresenceKey, PresenceStore, Topic};
use presence_sqlite::{SqliteConfig, SqliteStore};

fn key(topic: &str, member: &str, connection: &str) -> PresenceKey {
    PresenceKey::new(topic, member, connection).unwrap()
}

async fn open(path: &std::path::Path) -> SqliteStore {
    SqliteStore::open(SqliteConfig::file(path)).await.unwrap()
}

/// Joins member `m{i}` to `topic(i)` for each `i` in `0..n`, from `n`
/// tasks at once; each `i` with its result.
async fn joins_at_once(
    store: &Arc<SqliteStore>,
    n: usize,
    topic: fn(usize) -> &'static str,
) -> Vec<(usize, presence_core::Result<presence_core::Joined>)> {
    let joins = (0..n).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            let joined = store
                .join(&key(topic(i), &format!("m{i}"), "c"), Meta::new())
                .await;
            (i, joined)
        })
    });
    join_all(joins)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect()
}

fn backend_message(error: Error) -> String {
    match error {
        Error::Backend { backend, source } => {
            assert_eq!(backend, "sqlite");
            source.to_string()
        }
        other => panic!("expected a backend error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_joins_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(&dir.path().join("p.db")).await);
    let before = store.writer_stats();
    for (_, joined) in joins_at_once(&store, 64, |_| "room").await {
        assert!(!joined.unwrap().was_present);
    }
    let stats = store.writer_stats();
    let (calls, commits) = (stats.calls - before.calls, stats.commits - before.commits);
    assert_eq!(calls, 64);
    assert!(
        commits < calls,
        "64 concurrent joins took {commits} commits: no group commit"
    );
    assert_eq!(
        store
            .count(&Topic::new("room").unwrap())
            .await
            .unwrap()
            .members,
        64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_call_fails_only_its_caller() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.db");
    let store = Arc::new(open(&path).await);
    // Poison one topic: any insert into it fails inside SQLite.
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER poison BEFORE INSERT ON presence_entries WHEN NEW.topic = 'poison'
             BEGIN SELECT RAISE(ABORT, 'poisoned topic'); END;",
        )
        .unwrap();
    let room = Topic::new("room").unwrap();
    let mut events = store.subscribe(&room).await.unwrap();
    let before = store.writer_stats();
    let topic = |i: usize| {
        if i.is_multiple_of(4) {
            "poison"
        } else {
            "room"
        }
    };
    for (i, result) in joins_at_once(&store, 64, topic).await {
        if i.is_multiple_of(4) {
            assert!(backend_message(result.unwrap_err()).contains("poisoned topic"));
        } else {
            assert!(result.is_ok(), "join {i} failed: {result:?}");
        }
    }
    let stats = store.writer_stats();
    assert!(
        stats.commits - before.commits < 64,
        "the calls were not grouped"
    );
    assert_eq!(store.count(&room).await.unwrap().members, 48);
    assert!(
        store
            .members(&Topic::new("poison").unwrap())
            .await
            .unwrap()
            .is_empty()
    );
    // Events only for what committed: 48 joins, then nothing.
    let mut joined = 0;
    while joined < 48 {
        match futures::StreamExt::next(&mut events).await.unwrap() {
            Event::Join { entry, .. } => {
                assert_eq!(entry.key.topic, room);
                joined += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_file_that_is_not_a_database_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    let text = "these are my notes, not a database\n".repeat(200);
    std::fs::write(&path, &text).unwrap();
    let error = SqliteStore::open(SqliteConfig::file(&path))
        .await
        .unwrap_err();
    let message = backend_message(error);
    assert!(message.contains("not a SQLite database"), "{message}");
    assert!(message.contains("notes.txt"), "{message}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
}

#[tokio::test]
async fn a_newer_schema_is_refused_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.db");
    let store = open(&path).await;
    store
        .join(&key("room", "alice", "c"), Meta::new())
        .await
        .unwrap();
    drop(store);
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute("UPDATE presence_schema_version SET version = 99", [])
        .unwrap();
    drop(raw);

    let message = backend_message(
        SqliteStore::open(SqliteConfig::file(&path))
            .await
            .unwrap_err(),
    );
    assert!(message.contains("version 99"), "{message}");
    assert!(message.contains("newer"), "{message}");
    let raw = rusqlite::Connection::open(&path).unwrap();
    let rows: i64 = raw
        .query_row("SELECT count(*) FROM presence_entries", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 1, "the data is still there");
}

#[tokio::test]
async fn table_prefixes_keep_stores_apart_and_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.db");
    let open_with = |prefix: &str| {
        let mut config = SqliteConfig::file(&path);
        config.table_prefix = prefix.to_owned();
        SqliteStore::open(config)
    };
    let chat = open_with("chat_").await.unwrap();
    let docs = open_with("docs_").await.unwrap();
    chat.join(&key("t", "alice", "c"), Meta::new())
        .await
        .unwrap();
    assert!(
        docs.members(&Topic::new("t").unwrap())
            .await
            .unwrap()
            .is_empty()
    );
    for bad in ["x; DROP TABLE chat_entries; --", "9lives", "a-b", "é"] {
        let error = open_with(bad).await.unwrap_err();
        assert_eq!(error.invalid_field(), Some("table_prefix"), "{bad:?}");
    }
    assert_eq!(
        chat.members(&Topic::new("t").unwrap()).await.unwrap().len(),
        1
    );
}

/// A store may outlive the runtime it was opened on (say, dropped at the end
/// of a synchronous main): dropping it then must not panic.
#[test]
fn dropping_the_store_outside_a_runtime_is_fine() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.db");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let store = runtime.block_on(async {
        let store = open(&path).await;
        store
            .join(&key("room", "alice", "c"), Meta::new())
            .await
            .unwrap();
        // Reads put connections in the pool.
        assert_eq!(
            store
                .members(&Topic::new("room").unwrap())
                .await
                .unwrap()
                .len(),
            1
        );
        store
    });
    drop(store); // outside the runtime, which still runs
    let store = runtime.block_on(open(&path));
    runtime
        .block_on(store.count(&Topic::new("room").unwrap()))
        .unwrap();
    drop(runtime);
    drop(store); // after the runtime is gone
}

/// `checkpoint_pages` bounds the WAL whoever checkpoints: a small value
/// keeps it small, a large one lets it grow with the writes. The load is
/// 32 tasks joining without pause, so with background checkpoints the WAL
/// only starts over because the writer seals it (a passive checkpoint
/// running beside steady commits never copies the last frame); the stats
/// show who did the copying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_pages_bounds_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    for background in [true, false] {
        let mut wal_bytes = Vec::new();
        for pages in [50, 1_000_000] {
            let name = format!("wal-{background}-{pages}.db");
            let mut config = SqliteConfig::file(dir.path().join(&name));
            config.checkpoint_pages = pages;
            config.background_checkpoints = background;
            let store = Arc::new(SqliteStore::open(config).await.unwrap());
            let tasks = (0..32).map(|task| {
                let store = store.clone();
                tokio::spawn(async move {
                    for i in 0..300 {
                        let key = key(&format!("topic-{}", i % 100), &format!("m{task}-{i}"), "c");
                        store.join(&key, Meta::new()).await.unwrap();
                    }
                })
            });
            for task in join_all(tasks).await {
                task.unwrap();
            }
            let wal = dir.path().join(format!("{name}-wal"));
            wal_bytes.push(std::fs::metadata(&wal).unwrap().len());
            let stats = store.writer_stats();
            match (background, pages) {
                (true, 50) => {
                    assert!(stats.background_checkpoints > 0, "{stats:?}");
                    assert!(stats.seals > 0, "{stats:?}");
                }
                (true, _) => assert_eq!(stats.seals, 0, "{stats:?}"),
                (false, _) => {
                    assert_eq!((stats.background_checkpoints, stats.seals), (0, 0));
                }
            }
        }
        let (small, large) = (wal_bytes[0], wal_bytes[1]);
        // 50 pages are 200 KiB; the WAL may outgrow them by what the
        // writer commits before its seal gets through (a checkpoint pass in
        // progress holds it up). Unbounded, this load makes it ~20-40 MiB.
        assert!(
            small < 4 << 20,
            "a 50-page WAL grew to {small} bytes (background: {background})"
        );
        assert!(
            large > 4 * small,
            "a 1,000,000-page WAL stayed at {large} bytes (the 50-page one: {small}; \
             background: {background})"
        );
    }
}

/// A transaction that fails as a whole (here BEGIN, while another
/// connection holds the write lock past the busy timeout) fails every call
/// grouped into it with SQLite's own error as the cause: typed, reachable
/// through the source chain, printed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_transaction_fails_its_callers_with_sqlite_s_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.db");
    let mut config = SqliteConfig::file(&path);
    config.busy_timeout = std::time::Duration::from_millis(100);
    let store = Arc::new(SqliteStore::open(config).await.unwrap());
    store
        .join(&key("room", "first", "c"), Meta::new())
        .await
        .unwrap();
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute_batch("BEGIN IMMEDIATE").unwrap();

    for (_, joined) in joins_at_once(&store, 16, |_| "room").await {
        let error = joined.unwrap_err();
        assert!(
            matches!(
                error,
                Error::Backend {
                    backend: "sqlite",
                    ..
                }
            ),
            "{error:?}"
        );
        let chain = error.chain().to_string();
        assert!(chain.contains("database is locked"), "{chain}");
        assert_eq!(chain.matches("sqlite backend").count(), 1, "{chain}");
        let mut cause = std::error::Error::source(&error);
        let mut sqlite = None;
        while let Some(error) = cause {
            if let Some(found) = error.downcast_ref::<rusqlite::Error>() {
                sqlite = Some(found);
            }
            cause = error.source();
        }
        let sqlite = sqlite.unwrap_or_else(|| panic!("no rusqlite::Error in {chain}"));
        assert_eq!(
            sqlite.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy),
            "{chain}"
        );
    }
    raw.execute_batch("COMMIT").unwrap();
    store
        .join(&key("room", "after", "c"), Meta::new())
        .await
        .unwrap();
    assert_eq!(
        store
            .count(&Topic::new("room").unwrap())
            .await
            .unwrap()
            .members,
        2,
        "nothing of the failed groups was applied"
    );
}

/// Settings the store cannot work with are refused by name.
#[tokio::test]
async fn zero_settings_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.db");
    type Set = fn(&mut SqliteConfig);
    let zeroes: [(&str, Set); 6] = [
        ("max_meta_bytes", |c| c.max_meta_bytes = 0),
        ("event_buffer", |c| c.event_buffer = 0),
        ("read_connections", |c| c.read_connections = 0),
        ("max_group", |c| c.max_group = 0),
        ("sweep_piece_rows", |c| c.sweep_piece_rows = 0),
        ("checkpoint_pages", |c| c.checkpoint_pages = 0),
    ];
    for (field, set) in zeroes {
        let mut config = SqliteConfig::file(&path);
        set(&mut config);
        let error = SqliteStore::open(config).await.unwrap_err();
        assert_eq!(error.invalid_field(), Some(field), "{error}");
    }
    assert!(!path.exists(), "a refused setting touches no file");
}
