//! Workloads shared by the benches and the footprint measurement, so every
//! backend is measured on the same shapes.

use presence_core::{Meta, PresenceKey, PresenceStore};

pub mod redis_baseline;

/// The repository README's examples, compiled and run as doctests here (an
/// unpublished crate of the workspace: the README is not in any package).
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct RepositoryReadme;

/// Key `i` of a workload spread over `topics` topics, one connection per
/// member, every member id distinct.
pub fn spread_key(i: usize, topics: usize) -> PresenceKey {
    PresenceKey::new(
        format!("topic-{}", i % topics),
        format!("member-{i}"),
        "conn",
    )
    .expect("valid bench key")
}

/// `n` keys of [`spread_key`].
pub fn spread_keys(n: usize, topics: usize) -> Vec<PresenceKey> {
    (0..n).map(|i| spread_key(i, topics)).collect()
}

/// `n` keys never used before in this bench run (the counter `next`
/// remembers where the last call ended), so every join creates an entry.
///
/// Key `i`'s topic is drawn from `topics` by a generator seeded with `i`:
/// keys joined at the same moment land in unrelated topics however the
/// keys are shared out. (With `i % topics`, tasks given runs of 1,500 keys
/// over 1,000 topics all joined the same two topics at once, and the store
/// looked far faster than it is for keys that have nothing in common.)
pub fn fresh_keys(
    next: &std::sync::atomic::AtomicUsize,
    n: usize,
    topics: usize,
) -> Vec<PresenceKey> {
    let first = next.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    (first..first + n)
        .map(|i| {
            let topic = fastrand::Rng::with_seed(i as u64).usize(..topics.max(1));
            PresenceKey::new(format!("topic-{topic}"), format!("member-{i}"), "c")
                .expect("valid bench key")
        })
        .collect()
}

/// The process's resident set, in bytes, from `/proc/self/statm` (Linux).
pub fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm (Linux only)");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .expect("resident pages in statm");
    pages * 4096
}

/// The runtime every bench drives its store with: two workers, as many as
/// the machine has cores.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Joins every key with empty meta.
pub async fn join_all(store: &dyn PresenceStore, keys: &[PresenceKey]) {
    for key in keys {
        store.join(key, Meta::new()).await.expect("bench join");
    }
}

/// The keys of one topic with `members` members of `connections` connections each.
pub fn room_keys(topic: &str, members: usize, connections: usize) -> Vec<PresenceKey> {
    (0..members)
        .flat_map(|m| {
            (0..connections).map(move |c| {
                PresenceKey::new(topic, format!("member-{m}"), format!("conn-{c}"))
                    .expect("valid bench key")
            })
        })
        .collect()
}

/// Joins `keys` from `tasks` concurrent tasks, each joining its share one
/// call after another, and returns how long it took.
pub async fn join_concurrently(
    store: std::sync::Arc<dyn PresenceStore>,
    keys: Vec<PresenceKey>,
    tasks: usize,
) -> std::time::Duration {
    join_concurrently_timed(store, keys, tasks).await.0
}

/// [`join_concurrently`], also returning how long each call took, sorted.
pub async fn join_concurrently_timed(
    store: std::sync::Arc<dyn PresenceStore>,
    keys: Vec<PresenceKey>,
    tasks: usize,
) -> (std::time::Duration, Vec<std::time::Duration>) {
    let chunk = keys.len().div_ceil(tasks.max(1)).max(1);
    let mut shares: Vec<Vec<PresenceKey>> = Vec::new();
    let mut keys = keys.into_iter().peekable();
    while keys.peek().is_some() {
        shares.push(keys.by_ref().take(chunk).collect());
    }
    let start = std::time::Instant::now();
    let handles: Vec<_> = shares
        .into_iter()
        .map(|share| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut took = Vec::with_capacity(share.len());
                for key in &share {
                    let call = std::time::Instant::now();
                    store.join(key, Meta::new()).await.expect("bench join");
                    took.push(call.elapsed());
                }
                took
            })
        })
        .collect();
    let mut calls = Vec::new();
    for handle in handles {
        calls.extend(handle.await.expect("a joining task panicked"));
    }
    let elapsed = start.elapsed();
    calls.sort_unstable();
    (elapsed, calls)
}

/// The call at quantile `q` (0 to 1) of calls sorted by duration.
pub fn percentile(sorted: &[std::time::Duration], q: f64) -> std::time::Duration {
    if sorted.is_empty() {
        return std::time::Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q.clamp(0.0, 1.0)) as usize]
}

/// A duration in milliseconds, two decimals.
pub fn ms(d: std::time::Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// A SQLite file store in `dir` holding `n` entries over 1,000 topics,
/// filled through the API (64 tasks joining), all last seen at `at` by the
/// store's manual clock, which then moves on a minute: `sweep_all(at + 1
/// ms)` expires every one of them, and entries joined afterwards stay.
pub fn sqlite_expired_store(
    rt: &tokio::runtime::Runtime,
    path: &std::path::Path,
    n: usize,
    sweep_piece_rows: usize,
    at: presence_core::Timestamp,
) -> std::sync::Arc<presence_sqlite::SqliteStore> {
    let _ = std::fs::remove_file(path);
    let clock = presence_core::ManualClock::new(at);
    let mut config = presence_sqlite::SqliteConfig::file(path);
    config.clock = std::sync::Arc::new(clock.clone());
    config.sweep_piece_rows = sweep_piece_rows;
    let store = std::sync::Arc::new(
        rt.block_on(presence_sqlite::SqliteStore::open(config))
            .expect("open a SQLite bench store"),
    );
    rt.block_on(join_concurrently(store.clone(), spread_keys(n, 1_000), 64));
    clock.advance(std::time::Duration::from_secs(60));
    store
}

/// `touch_many` of 1,000 present keys, a [`presence::Heartbeats`] flush of
/// 50,000 sockets' heartbeats, and `count` of a topic of 100,000 members, on
/// any store, in the criterion group `group`: the same shapes for every
/// backend.
pub fn bench_heartbeats_and_count(
    c: &mut criterion::Criterion,
    rt: &tokio::runtime::Runtime,
    store: std::sync::Arc<dyn PresenceStore>,
    group: &str,
) {
    use criterion::Throughput;
    use std::hint::black_box;

    let keys = spread_keys(1_000, 100);
    rt.block_on(join_concurrently(store.clone(), keys.clone(), 64));
    let mut group = c.benchmark_group(group);
    group.throughput(Throughput::Elements(keys.len() as u64));
    group.bench_function("touch_many_1000", |b| {
        b.iter(|| black_box(rt.block_on(store.touch_many(&keys)).unwrap()))
    });

    // 50,000 sockets heartbeating once each between two flushes; only the
    // flush is timed.
    let sockets = spread_keys(50_000, 1_000);
    rt.block_on(join_concurrently(store.clone(), sockets.clone(), 64));
    let heartbeats = {
        let _runtime = rt.enter();
        presence::Heartbeats::new(store.clone(), std::time::Duration::from_secs(3600))
            .expect("a valid interval")
    };
    group.throughput(Throughput::Elements(sockets.len() as u64));
    group.sample_size(10);
    group.bench_function("heartbeats_flush_50000", |b| {
        b.iter_custom(|iters| {
            let mut flushing = std::time::Duration::ZERO;
            for _ in 0..iters {
                for key in &sockets {
                    heartbeats.touch(key.clone());
                }
                let start = std::time::Instant::now();
                let absent = rt.block_on(heartbeats.flush()).unwrap();
                flushing += start.elapsed();
                assert!(absent.is_empty());
            }
            flushing
        })
    });
    group.sample_size(100);

    let room = room_keys("big-room", 100_000, 1);
    rt.block_on(join_concurrently(store.clone(), room.clone(), 64));
    let topic = room[0].topic.clone();
    group.throughput(Throughput::Elements(1));
    group.bench_function("count_100000_members", |b| {
        b.iter(|| black_box(rt.block_on(store.count(&topic)).unwrap()))
    });
    group.finish();
}
