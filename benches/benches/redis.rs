//! Criterion benches of the Redis store, on one server and on a three-master
//! cluster, against a baseline (`benches::redis_baseline`) that makes the same joins as
//! plain commands, one call at a time: HSET of the entry, then ZADD of its
//! last-seen time, each awaited before the next, no script, no pipelining:
//! each of the 64 tasks has a connection of its own
//! (`plain_commands_one_at_a_time`). A second baseline shares one
//! multiplexed connection among the 64 tasks, which pipelines their
//! commands implicitly (`plain_commands_multiplexed`): plain commands at
//! their fastest, for comparison.
//! Both run on the same servers, started by the test harness with an
//! append-only file synced every second (or `PRESENCE_REDIS_URL` /
//! `PRESENCE_REDIS_CLUSTER`), under key prefixes of their own.
//!
//! Run with `cargo bench -p benches --bench redis`.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use benches::redis_baseline::Plain;
use benches::{bench_heartbeats_and_count, fresh_keys, join_concurrently, room_keys, runtime};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use presence_core::{ManualClock, PresenceKey, PresenceStore, Timestamp};
use presence_redis::{RedisConfig, RedisStore, testing};
use tokio::runtime::Runtime;

fn single(label: &str) -> RedisConfig {
    testing::prefer_durable_server();
    let mut config =
        RedisConfig::new(testing::server_url().expect("a Redis server for the benches"));
    config.key_prefix = testing::unique_prefix(label);
    config
}

fn cluster(label: &str) -> RedisConfig {
    testing::prefer_durable_server();
    let mut config =
        RedisConfig::cluster(testing::cluster_nodes().expect("a Redis Cluster for the benches"));
    config.key_prefix = testing::unique_prefix(label);
    config
}

fn store(rt: &Runtime, config: RedisConfig) -> Arc<RedisStore> {
    Arc::new(rt.block_on(RedisStore::connect(config)).unwrap())
}

fn bench_joins(c: &mut Criterion, group: &str, config: RedisConfig) {
    let rt = runtime();
    let baseline_prefix = testing::unique_prefix("baseline");
    // One connection per task (nothing pipelined), and one shared by all.
    let own_connections: Vec<Plain> = rt.block_on(async {
        let mut connections = Vec::new();
        for _ in 0..64 {
            connections.push(Plain::connect(&config.url, &config.nodes).await);
        }
        connections
    });
    let shared_connection = vec![rt.block_on(Plain::connect(&config.url, &config.nodes))];
    let ours = store(&rt, config);
    let next = AtomicUsize::new(0);
    let mut group = c.benchmark_group(group);
    group.throughput(Throughput::Elements(1));
    for (suffix, topics) in [("", 1_000usize), ("_one_topic", 1)] {
        group.bench_function(format!("coalesced{suffix}"), |b| {
            b.iter_custom(|iters| {
                let keys = fresh_keys(&next, iters as usize, topics);
                let store: Arc<dyn PresenceStore> = ours.clone();
                rt.block_on(join_concurrently(store, keys, 64))
            })
        });
        for (name, plains) in [
            ("plain_commands_one_at_a_time", &own_connections),
            ("plain_commands_multiplexed", &shared_connection),
        ] {
            group.bench_function(format!("{name}{suffix}"), |b| {
                b.iter_custom(|iters| {
                    let keys = fresh_keys(&next, iters as usize, topics);
                    rt.block_on(Plain::join_concurrently(plains, &baseline_prefix, &keys))
                })
            });
        }
    }
    group.finish();
}

fn joins(c: &mut Criterion) {
    bench_joins(c, "redis/join_new_keys_64_tasks", single("bench_joins"));
}

fn cluster_joins(c: &mut Criterion) {
    bench_joins(
        c,
        "redis_cluster/join_new_keys_64_tasks",
        cluster("bench_cluster_joins"),
    );
}

fn heartbeats_and_count(c: &mut Criterion) {
    let rt = runtime();
    let store = store(&rt, single("bench_reads"));
    bench_heartbeats_and_count(c, &rt, store, "redis");
}

fn sweeps(c: &mut Criterion) {
    let rt = runtime();
    let clock = ManualClock::new(Timestamp::from_millis(1_000));
    let mut config = single("bench_sweep");
    config.clock = Arc::new(clock.clone());
    let store = store(&rt, config);
    let mut group = c.benchmark_group("redis");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.bench_function("sweep_all_100000_expired", |b| {
        b.iter_batched(
            || {
                // Setup, not measured: 100,000 entries over 100 topics of
                // 1,000, joined through the store at time 1,000.
                clock.set(Timestamp::from_millis(1_000));
                let keys: Vec<PresenceKey> = (0..100)
                    .flat_map(|t| room_keys(&format!("topic-{t}"), 1_000, 1))
                    .collect();
                rt.block_on(join_concurrently(store.clone(), keys, 64));
            },
            |()| {
                let swept = rt
                    .block_on(store.sweep_all(Timestamp::from_millis(2_000)))
                    .unwrap();
                assert_eq!(swept.len(), 100_000);
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, joins, heartbeats_and_count, sweeps, cluster_joins);
criterion_main!(benches);
