//! Criterion benches of the memory store. Run with
//! `cargo bench -p benches --bench memory`; figures go to BENCHMARKS.md.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use benches::{join_all, room_keys, spread_keys};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use presence_core::{Clock, ManualClock, Meta, PresenceStore, Timestamp};
use presence_memory::{MemoryConfig, MemoryStore};
use tokio::runtime::Runtime;

fn single_thread() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

fn store_with_clock(clock: &ManualClock) -> MemoryStore {
    MemoryStore::with_config(MemoryConfig {
        clock: Arc::new(clock.clone()),
        ..MemoryConfig::default()
    })
}

fn single_key_calls(c: &mut Criterion) {
    let rt = single_thread();
    let mut group = c.benchmark_group("memory");
    group.throughput(Throughput::Elements(1));

    // New entries: keys are made before the clock starts, a fresh store per
    // measurement, spread over 1,000 topics.
    group.bench_function("join", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let store = MemoryStore::new();
            let keys = spread_keys(iters as usize, 1_000);
            let start = Instant::now();
            for key in &keys {
                black_box(store.join(key, Meta::new()).await.unwrap());
            }
            start.elapsed()
        })
    });

    let store = MemoryStore::new();
    let keys = spread_keys(10_000, 1_000);
    rt.block_on(join_all(&store, &keys));
    group.bench_function("touch", |b| {
        let mut i = 0;
        b.to_async(&rt).iter(|| {
            i = (i + 1) % keys.len();
            let (store, key) = (&store, &keys[i]);
            async move { black_box(store.touch(key).await.unwrap()) }
        })
    });

    group.bench_function("leave", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let store = MemoryStore::new();
            let keys = spread_keys(iters as usize, 1_000);
            join_all(&store, &keys).await;
            let start = Instant::now();
            for key in &keys {
                black_box(store.leave(key).await.unwrap());
            }
            start.elapsed()
        })
    });
    group.finish();
}

fn batch_and_reads(c: &mut Criterion) {
    let rt = single_thread();
    let mut group = c.benchmark_group("memory");

    let store = MemoryStore::new();
    let keys = spread_keys(1_000, 100);
    rt.block_on(join_all(&store, &keys));
    group.throughput(Throughput::Elements(keys.len() as u64));
    group.bench_function("touch_many_1000", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(store.touch_many(&keys).await.unwrap()) })
    });

    let room = room_keys("room", 1_000, 2);
    rt.block_on(join_all(&store, &room));
    let topic = room[0].topic.clone();
    group.throughput(Throughput::Elements(1));
    group.bench_function("members_1000x2", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(store.members(&topic).await.unwrap()) })
    });
    group.bench_function("count_1000x2", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(store.count(&topic).await.unwrap()) })
    });
    // count is O(1): a topic 100x larger costs the same.
    let big = room_keys("big-room", 100_000, 1);
    rt.block_on(join_all(&store, &big));
    let big_topic = big[0].topic.clone();
    group.bench_function("count_100000x1", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(store.count(&big_topic).await.unwrap()) })
    });
    group.finish();
}

/// 100,000 entries over 1,000 topics of which 10% are older than the cutoff,
/// either spread over every topic or held by 10% of the topics.
fn sweep_store(rt: &Runtime, expired_in_few_topics: bool) -> (MemoryStore, Timestamp) {
    let clock = ManualClock::new(Timestamp::from_millis(1_000_000));
    let store = store_with_clock(&clock);
    let keys = spread_keys(100_000, 1_000);
    let (old, fresh): (Vec<_>, Vec<_>) = keys.into_iter().enumerate().partition(|(i, _)| {
        if expired_in_few_topics {
            (i % 1_000) < 100
        } else {
            i % 10 == 0
        }
    });
    let strip = |v: Vec<(usize, presence_core::PresenceKey)>| -> Vec<_> {
        v.into_iter().map(|(_, k)| k).collect()
    };
    rt.block_on(join_all(&store, &strip(old)));
    clock.advance(Duration::from_secs(60));
    rt.block_on(join_all(&store, &strip(fresh)));
    let cutoff = clock.now() - Duration::from_secs(30);
    (store, cutoff)
}

fn sweeps(c: &mut Criterion) {
    let rt = single_thread();
    let mut group = c.benchmark_group("memory/sweep_all_100000_10pct");
    group.sample_size(20);
    for (name, few) in [("expired_spread", false), ("expired_in_few_topics", true)] {
        group.bench_function(name, |b| {
            b.iter_batched(
                || sweep_store(&rt, few),
                |(store, cutoff)| {
                    let swept = rt.block_on(store.sweep_all(cutoff)).unwrap();
                    assert_eq!(swept.len(), 10_000);
                    store // dropped outside the timing
                },
                BatchSize::PerIteration,
            )
        });
    }
    let (store, cutoff) = sweep_store(&rt, false);
    rt.block_on(store.sweep_all(cutoff)).unwrap();
    group.bench_function("nothing_left_to_expire", |b| {
        b.iter(|| black_box(rt.block_on(store.sweep_all(cutoff)).unwrap()))
    });
    group.finish();
}

/// Touches from `tasks` tasks at once on a multi-threaded runtime, each on
/// its own keys, measured as total calls.
fn concurrent_touch(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let store = MemoryStore::new();
    let keys = Arc::new(spread_keys(20_000, 1_000));
    rt.block_on(join_all(&store, &keys));
    let mut group = c.benchmark_group("memory/touch_tasks");
    group.throughput(Throughput::Elements(1));
    for tasks in [1usize, 2] {
        group.bench_function(format!("{tasks}"), |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let (store, keys) = (store.clone(), keys.clone());
                async move {
                    let per_task = (iters as usize).div_ceil(tasks);
                    let start = Instant::now();
                    let handles: Vec<_> = (0..tasks)
                        .map(|t| {
                            let (store, keys) = (store.clone(), keys.clone());
                            tokio::spawn(async move {
                                let mine = &keys[t * 10_000..(t + 1) * 10_000];
                                for i in 0..per_task {
                                    black_box(store.touch(&mine[i % mine.len()]).await.unwrap());
                                }
                            })
                        })
                        .collect();
                    for handle in handles {
                        handle.await.unwrap();
                    }
                    start.elapsed()
                }
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    single_key_calls,
    batch_and_reads,
    sweeps,
    concurrent_touch
);
criterion_main!(benches);
