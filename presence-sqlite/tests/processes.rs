//! Several OS processes on one database file: concurrent opening, writes
//! racing across processes, and durability when a writer is killed.
//!
//! The test binary runs itself as the child processes: `child_process` is
//! an ignored test that does nothing unless `PRESENCE_CHILD_ROLE` is set.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use conformance::processes::{Report, child_command, mixed_writer, print_key, tagged};
use conformance::support::stored_keys;
use presence_core::{Meta, PresenceKey, PresenceStore, Topic};
use presence_sqlite::{SqliteConfig, SqliteStore};

const ROLE: &str = "PRESENCE_CHILD_ROLE";
const DB: &str = "PRESENCE_CHILD_DB";
const ID: &str = "PRESENCE_CHILD_ID";

fn spawn_child(role: &str, db: &Path, id: usize) -> Child {
    child_command()
        .env(ROLE, role)
        .env(DB, db)
        .env(ID, id.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn a child process")
}

fn finish(child: Child) -> Vec<String> {
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "a child process failed: {:?}",
        output.status
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
#[ignore = "a child process of the multi-process tests, not a test of its own"]
fn child_process() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    // The harness has printed "test child_process ... " without a newline.
    println!();
    let db = std::env::var(DB).unwrap();
    let id: usize = std::env::var(ID).unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = Arc::new(SqliteStore::open(SqliteConfig::file(&db)).await.unwrap());
        match role.as_str() {
            "opener" => {
                store
                    .join(
                        &PresenceKey::new("opened", format!("p{id}"), "c").unwrap(),
                        Meta::new(),
                    )
                    .await
                    .unwrap();
                println!("opened");
            }
            "joiner" => joiner(store).await,
            "mixer" => mixed_writer(&*store, id, 600, 20).await,
            other => panic!("unknown role {other}"),
        }
    });
}

/// Joins new keys from 8 tasks forever, printing each acknowledged one.
async fn joiner(store: Arc<SqliteStore>) {
    let tasks: Vec<_> = (0..8)
        .map(|task| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0.. {
                    let key = PresenceKey::new(format!("t{}", i % 10), format!("m{task}-{i}"), "c")
                        .unwrap();
                    store.join(&key, Meta::new()).await.unwrap();
                    print_key("ack", &key);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

#[test]
fn processes_opening_a_new_file_at_once_all_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("new.db");
    let children: Vec<Child> = (0..4).map(|id| spawn_child("opener", &db, id)).collect();
    for child in children {
        assert!(finish(child).iter().any(|line| line == "opened"));
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let members = rt.block_on(async {
        let store = SqliteStore::open(SqliteConfig::file(&db)).await.unwrap();
        store.members(&Topic::new("opened").unwrap()).await.unwrap()
    });
    assert_eq!(
        members.len(),
        4,
        "every process opened the file and wrote to it"
    );
}

#[test]
fn every_acknowledged_join_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("durable.db");
    let mut child = spawn_child("joiner", &db, 0);
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in stdout.lines() {
            let _ = lines_tx.send(line.unwrap());
        }
    });
    // Kill it mid-load: once it has acknowledged a few thousand joins.
    let mut acked = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.len() < 3_000 && Instant::now() < deadline {
        if let Ok(line) = lines_rx.recv_timeout(Duration::from_secs(1)) {
            acked.extend(tagged(&[line], "ack"));
        }
    }
    eprintln!("killing the child after {} acknowledged joins", acked.len());
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    reader.join().unwrap();
    // Everything it printed before dying was acknowledged too.
    acked.extend(lines_rx.try_iter().flat_map(|line| tagged(&[line], "ack")));
    assert!(
        acked.len() >= 3_000,
        "the child acknowledged only {} joins in 60 s",
        acked.len()
    );

    let integrity: String = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stored: BTreeSet<PresenceKey> = rt.block_on(async {
        let store = SqliteStore::open(SqliteConfig::file(&db)).await.unwrap();
        let mut stored = BTreeSet::new();
        for t in 0..10 {
            stored.extend(stored_keys(&store, &Topic::new(format!("t{t}")).unwrap()).await);
        }
        stored
    });
    let lost: Vec<_> = acked.iter().filter(|k| !stored.contains(k)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged joins were lost, e.g. {:?}",
        lost.len(),
        lost.first()
    );
}

#[test]
fn two_processes_lose_no_write_and_report_each_expiry_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    let children: Vec<Child> = (0..2).map(|id| spawn_child("mixer", &db, id)).collect();
    let lines: Vec<String> = children.into_iter().flat_map(finish).collect();
    let report = Report::read(&lines);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stored: BTreeSet<PresenceKey> = rt.block_on(async {
        let store = SqliteStore::open(SqliteConfig::file(&db)).await.unwrap();
        stored_keys(&store, &Topic::new("shared").unwrap()).await
    });
    report.check(1_200, &stored);
}
