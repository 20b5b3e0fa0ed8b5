//! Criterion benches of the SQLite store (a WAL file in a temporary
//! directory). Run with `cargo bench -p benches --bench sqlite`; figures go
//! to BENCHMARKS.md.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use benches::{bench_heartbeats_and_count, fresh_keys, join_concurrently, runtime};
use criterion::{BatchSize, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use presence_core::{PresenceStore, Timestamp};
use presence_sqlite::{SqliteConfig, SqliteStore};
use tokio::runtime::Runtime;

fn open(rt: &Runtime, dir: &tempfile::TempDir, name: &str) -> Arc<SqliteStore> {
    open_with(rt, SqliteConfig::file(dir.path().join(name)))
}

fn open_with(rt: &Runtime, config: SqliteConfig) -> Arc<SqliteStore> {
    Arc::new(rt.block_on(SqliteStore::open(config)).unwrap())
}

/// 64 tasks joining at once (group commit) against the same calls made one
/// at a time, in one group so the ratio comes from one run; keys over 1,000
/// topics (each join dirties a page of its own), and in one busy topic
/// (joins share pages).
fn joins(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let store = open(&rt, &dir, "joins.db");
    // The same load with SQLite's own checkpoints, inside the commits.
    let mut config = SqliteConfig::file(dir.path().join("joins-writer-checkpoints.db"));
    config.background_checkpoints = false;
    let writer_checkpoints = open_with(&rt, config);
    let next = AtomicUsize::new(0);
    let mut group = c.benchmark_group("sqlite/join_new_keys");
    group.throughput(Throughput::Elements(1));
    for (id, tasks, topics, store) in [
        ("1_tasks", 1usize, 1_000usize, &store),
        ("64_tasks", 64, 1_000, &store),
        ("64_tasks_one_topic", 64, 1, &store),
        (
            "64_tasks_checkpoints_in_writer",
            64,
            1_000,
            &writer_checkpoints,
        ),
    ] {
        group.bench_function(id, |b| {
            b.iter_custom(|iters| {
                let keys = fresh_keys(&next, iters as usize, topics);
                let store: Arc<dyn PresenceStore> = store.clone();
                rt.block_on(join_concurrently(store, keys, tasks))
            })
        });
    }
    group.finish();
}

fn heartbeats_and_count(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let store = open(&rt, &dir, "reads.db");
    bench_heartbeats_and_count(c, &rt, store, "sqlite");
}

/// `sweep_all` of 100,000 expired entries over 1,000 topics, in a file
/// filled through the API (64 tasks joining; not measured), in pieces (the
/// default) and, for comparison in the same run, as one transaction.
fn sweeps(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sweep.db");
    let at = Timestamp::from_millis(1_700_000_000_000);
    let mut group = c.benchmark_group("sqlite/sweep_all_100000_expired");
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_millis(1));
    group.measurement_time(Duration::from_secs(10));
    let default_rows = SqliteConfig::file(&path).sweep_piece_rows;
    for (id, rows) in [("pieces", default_rows), ("one_transaction", usize::MAX)] {
        group.bench_function(id, |b| {
            b.iter_batched(
                || benches::sqlite_expired_store(&rt, &path, 100_000, rows, at),
                |store| {
                    let swept = rt
                        .block_on(store.sweep_all(at + Duration::from_millis(1)))
                        .unwrap();
                    assert_eq!(swept.len(), 100_000);
                    rt.block_on(store.close()).unwrap();
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, joins, heartbeats_and_count, sweeps);
criterion_main!(benches);
