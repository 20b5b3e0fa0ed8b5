//! What a mass expiry does to the joins around it on the Postgres store:
//! the p50/p99/max of `join` calls made by 64 tasks while `sweep_all`
//! removes 100,000 expired entries (joined through the API over 1,000
//! topics, the same topics the live joins go to), with the sweep in pieces
//! (the default `sweep_chunk`, 1,000, and 5,000) and in one transaction (a
//! `sweep_chunk` above the table's size, as before pieces), and the same
//! joins over the same span of time with no sweep. All in one run, each
//! variant on a fresh schema of one server (the harness's, fsync on). Run
//! with `cargo run --release -p benches --bin postgres_sweep_under_load`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use presence_core::{Meta, PresenceStore};
use presence_postgres::{PostgresConfig, PostgresStore, testing};

const EXPIRED: usize = 100_000;
const TASKS: usize = 64;
const TOPICS: usize = 1_000;

struct Turn {
    sweep: Option<Duration>,
    calls: Vec<Duration>,
}

fn main() {
    testing::prefer_durable_server();
    let url = testing::server_url().expect("a Postgres server");
    let rt = benches::runtime();
    let next = Arc::new(AtomicUsize::new(0));
    println!("variant | sweep_all of {EXPIRED} | joins in the window | p50 | p99 | max");
    let mut window = None;
    for (name, chunk) in [
        ("sweep in pieces of 1,000 (default)", Some(1_000)),
        ("sweep in pieces of 5,000", Some(5_000)),
        ("sweep in one transaction", Some(usize::MAX / 2)),
        ("no sweep", None),
    ] {
        let turn = rt.block_on(run(&url, &next, chunk, window));
        let sweep = turn.sweep.or(window).expect("a window");
        window.get_or_insert(sweep);
        let calls = turn.calls;
        let at = |q: f64| calls[((calls.len() - 1) as f64 * q) as usize];
        println!(
            "{name} | {} | {} | {:.1} ms | {:.1} ms | {:.1} ms",
            match turn.sweep {
                Some(took) => format!("{:.0} ms", took.as_secs_f64() * 1e3),
                None => "-".to_owned(),
            },
            calls.len(),
            at(0.5).as_secs_f64() * 1e3,
            at(0.99).as_secs_f64() * 1e3,
            at(1.0).as_secs_f64() * 1e3,
        );
    }
}

/// Fills a fresh store with `EXPIRED` entries through joins, then runs the
/// live joins; with `chunk`, sweeps everything filled meanwhile, and the
/// window is the sweep; without, the window is `window` long.
async fn run(
    url: &str,
    next: &Arc<AtomicUsize>,
    chunk: Option<usize>,
    window: Option<Duration>,
) -> Turn {
    let mut config = PostgresConfig::new(url);
    config.schema = testing::unique_schema("sweep_load");
    config.pool_size = 8;
    if let Some(chunk) = chunk {
        config.sweep_chunk = chunk;
    }
    let store = Arc::new(PostgresStore::connect(config).await.expect("connect"));
    let fill = benches::fresh_keys(next, EXPIRED, TOPICS);
    benches::join_concurrently(store.clone(), fill, TASKS).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    let cutoff = store.clock().now();

    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let joiners: Vec<_> = (0..TASKS)
        .map(|_| {
            let (store, stop, next) = (store.clone(), stop.clone(), next.clone());
            tokio::spawn(async move {
                let mut calls = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let key = benches::fresh_keys(&next, 1, TOPICS).pop().expect("a key");
                    let began = Instant::now();
                    store.join(&key, Meta::new()).await.expect("join");
                    calls.push((began - start, began.elapsed()));
                }
                calls
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let from = start.elapsed();
    let sweep = match chunk {
        Some(_) => {
            let began = Instant::now();
            let swept = store.sweep_all(cutoff).await.expect("sweep_all");
            assert_eq!(swept.len(), EXPIRED);
            Some(began.elapsed())
        }
        None => {
            tokio::time::sleep(window.expect("a window")).await;
            None
        }
    };
    let to = start.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut calls = Vec::new();
    for joiner in joiners {
        for (began, took) in joiner.await.expect("a joiner") {
            if began >= from && began < to {
                calls.push(took);
            }
        }
    }
    calls.sort_unstable();
    store.close().await.expect("close");
    Turn { sweep, calls }
}
