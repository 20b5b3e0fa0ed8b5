//! What a mass expiry does to the joins around it on the SQLite store. Run
//! with `cargo run --release -p benches --bin sqlite_sweep_during_joins`.
//!
//! Each turn fills a fresh file with 100,000 entries over 1,000 topics
//! through the API (64 tasks joining), all of which then expire. First 64
//! tasks join 12,800 new keys with no sweep running (the baseline); then
//! `sweep_all` removes the 100,000 while the 64 tasks keep joining new keys
//! until it returns. Both the default store (the sweep in pieces of
//! `sweep_piece_rows` entries, each a turn of the writer) and one sweeping
//! in one transaction (`sweep_piece_rows = usize::MAX`, as before pieces)
//! take turns in one process, so their figures compare as ratios. Piece
//! sizes to compare instead may be given as arguments
//! (`-- 128 512 18446744073709551615`, the last being one transaction).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use benches::{fresh_keys, ms, percentile};
use presence_core::{Meta, PresenceStore, Timestamp};
use presence_sqlite::{SqliteConfig, SqliteStore};

const TURNS: usize = 3;
const ENTRIES: usize = 100_000;
const TASKS: usize = 64;
const BASELINE_JOINS: usize = 12_800;

/// 64 tasks joining new keys until `stop` is set; every call's duration,
/// sorted.
async fn join_until(
    store: Arc<SqliteStore>,
    next: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> Vec<Duration> {
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let (store, next, stop) = (store.clone(), next.clone(), stop.clone());
            tokio::spawn(async move {
                let mut took = Vec::new();
                while !stop.load(Ordering::Acquire) {
                    let key = fresh_keys(&next, 1, 1_000).pop().expect("one key");
                    let call = Instant::now();
                    store.join(&key, Meta::new()).await.expect("bench join");
                    took.push(call.elapsed());
                }
                took
            })
        })
        .collect();
    let mut calls = Vec::new();
    for task in tasks {
        calls.extend(task.await.expect("a joining task panicked"));
    }
    calls.sort_unstable();
    calls
}

fn main() {
    let rt = benches::runtime();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let at = Timestamp::from_millis(1_700_000_000_000);
    let default_rows = SqliteConfig::file(dir.path()).sweep_piece_rows;
    // Other piece sizes to compare may be given as arguments.
    let mut sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|arg| arg.parse().expect("a piece size in rows"))
        .collect();
    if sizes.is_empty() {
        sizes = vec![default_rows, usize::MAX];
    }
    let variants: Vec<(String, usize)> = sizes
        .into_iter()
        .map(|rows| match rows {
            usize::MAX => ("one transaction".to_owned(), rows),
            _ => (format!("pieces of {rows}"), rows),
        })
        .collect();
    // Keys never used before, from one counter: joins go to fresh entries.
    let next = Arc::new(AtomicUsize::new(10_000_000));
    println!(
        "sweep_all        | turn | sweep_all | joins during | p50 | p99 | max | no sweep: p50 | p99 | max | p99 during / without"
    );
    for turn in 1..=TURNS {
        for (name, rows) in &variants {
            let path = dir.path().join(format!("sweep-{rows}.db"));
            let store = benches::sqlite_expired_store(&rt, &path, ENTRIES, *rows, at);

            let keys = fresh_keys(&next, BASELINE_JOINS, 1_000);
            let store_dyn: Arc<dyn PresenceStore> = store.clone();
            let (_, baseline) =
                rt.block_on(benches::join_concurrently_timed(store_dyn, keys, TASKS));

            let stop = Arc::new(AtomicBool::new(false));
            let (took, during) = rt.block_on(async {
                let joins = tokio::spawn(join_until(store.clone(), next.clone(), stop.clone()));
                // Let the joiners get going before the sweep starts.
                tokio::time::sleep(Duration::from_millis(20)).await;
                let start = Instant::now();
                let swept = store
                    .sweep_all(at + Duration::from_millis(1))
                    .await
                    .expect("sweep_all");
                let took = start.elapsed();
                stop.store(true, Ordering::Release);
                assert_eq!(swept.len(), ENTRIES, "every filled entry expired");
                (took, joins.await.expect("the joiners"))
            });
            rt.block_on(store.close()).expect("close");

            let p99 = percentile(&during, 0.99);
            let base_p99 = percentile(&baseline, 0.99);
            println!(
                "{name:16} | {turn} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1}x",
                ms(took),
                during.len(),
                ms(percentile(&during, 0.5)),
                ms(p99),
                ms(percentile(&during, 1.0)),
                ms(percentile(&baseline, 0.5)),
                ms(base_p99),
                ms(percentile(&baseline, 1.0)),
                p99.as_secs_f64() / base_p99.as_secs_f64(),
            );
        }
    }
}
