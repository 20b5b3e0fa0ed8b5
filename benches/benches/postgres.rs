//! Criterion benches of the Postgres store against a baseline written here
//! that issues one statement per call, the way the pgbus gem does (an upsert
//! per join, an update per touch), on a pool of 8. Both run on one server
//! started by the test harness with fsync on (or `PRESENCE_PG_URL`), in
//! schemas of their own. Run with `cargo bench -p benches --bench postgres`.
//! Every store here is filled through the API (joins by 64 tasks); only
//! the baseline's own table is written by its own statements.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use benches::{bench_heartbeats_and_count, fresh_keys, join_concurrently, runtime};
use criterion::{BatchSize, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use presence_core::{PresenceKey, PresenceStore, Timestamp};
use presence_postgres::{PostgresConfig, PostgresStore, testing};
use tokio::runtime::Runtime;
use tokio_postgres::NoTls;

fn url() -> String {
    testing::prefer_durable_server();
    testing::server_url().expect("a Postgres server for the benches")
}

fn store(rt: &Runtime, label: &str) -> Arc<PostgresStore> {
    let mut config = PostgresConfig::new(url());
    config.schema = testing::unique_schema(label);
    config.pool_size = 8;
    Arc::new(rt.block_on(PostgresStore::connect(config)).unwrap())
}

/// The baseline: one statement per call on a pool of 8, as pgbus does.
struct OneStatementPerCall {
    pool: Pool,
    schema: String,
}

impl OneStatementPerCall {
    async fn new(url: &str) -> Self {
        let manager = Manager::from_config(
            url.parse().unwrap(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager).max_size(8).build().unwrap();
        let schema = testing::unique_schema("baseline");
        pool.get()
            .await
            .unwrap()
            .batch_execute(&format!(
                "CREATE SCHEMA {schema};
                 CREATE TABLE {schema}.presences (
                     channel text NOT NULL, identity text NOT NULL, connection text NOT NULL,
                     metadata jsonb NOT NULL DEFAULT '{{}}', joined_at bigint NOT NULL, last_seen_at bigint NOT NULL,
                     PRIMARY KEY (channel, identity, connection));
                 CREATE INDEX ON {schema}.presences (last_seen_at);"
            ))
            .await
            .unwrap();
        Self { pool, schema }
    }

    async fn join(&self, key: &PresenceKey) {
        let client = self.pool.get().await.unwrap();
        let sql = format!(
            "INSERT INTO {}.presences VALUES ($1, $2, $3, '{{}}', $4, $4) \
             ON CONFLICT (channel, identity, connection) DO UPDATE SET last_seen_at = EXCLUDED.last_seen_at",
            self.schema
        );
        let statement = client.prepare_cached(&sql).await.unwrap();
        let now = presence_core::Clock::now(&presence_core::SystemClock).as_millis();
        client
            .execute(
                &statement,
                &[
                    &key.topic.as_str(),
                    &key.member.as_str(),
                    &key.connection.as_str(),
                    &now,
                ],
            )
            .await
            .unwrap();
    }
}

fn joins(c: &mut Criterion) {
    let rt = runtime();
    let ours = store(&rt, "bench_joins");
    let baseline = Arc::new(rt.block_on(OneStatementPerCall::new(&url())));
    let next = AtomicUsize::new(0);
    let mut group = c.benchmark_group("postgres/join_new_keys_64_tasks");
    group.throughput(Throughput::Elements(1));
    // Keys over 1,000 topics, and in one busy topic.
    for (suffix, topics) in [("", 1_000usize), ("_one_topic", 1)] {
        group.bench_function(format!("coalesced{suffix}"), |b| {
            b.iter_custom(|iters| {
                let keys = fresh_keys(&next, iters as usize, topics);
                let store: Arc<dyn PresenceStore> = ours.clone();
                rt.block_on(join_concurrently(store, keys, 64))
            })
        });
        group.bench_function(format!("one_statement_per_call{suffix}"), |b| {
            b.iter_custom(|iters| {
                let keys = fresh_keys(&next, iters as usize, topics);
                let baseline = baseline.clone();
                rt.block_on(async move {
                    let chunk = keys.len().div_ceil(64).max(1);
                    let start = Instant::now();
                    let tasks: Vec<_> = keys
                        .chunks(chunk)
                        .map(|share| {
                            let (baseline, share) = (baseline.clone(), share.to_vec());
                            tokio::spawn(async move {
                                for key in &share {
                                    baseline.join(key).await;
                                }
                            })
                        })
                        .collect();
                    for task in tasks {
                        task.await.unwrap();
                    }
                    start.elapsed()
                })
            })
        });
    }
    group.finish();
}

fn heartbeats_and_count(c: &mut Criterion) {
    let rt = runtime();
    let store = store(&rt, "bench_reads");
    bench_heartbeats_and_count(c, &rt, store, "postgres");
}

fn sweeps(c: &mut Criterion) {
    let rt = runtime();
    let next = AtomicUsize::new(0);
    let mut group = c.benchmark_group("postgres");
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.measurement_time(Duration::from_secs(10));
    // In pieces of the default `sweep_chunk` (1,000), and in one
    // transaction as before pieces.
    for (name, chunk) in [
        ("sweep_all_100000_expired", None),
        (
            "sweep_all_100000_expired_one_transaction",
            Some(usize::MAX / 2),
        ),
    ] {
        let mut config = PostgresConfig::new(url());
        config.schema = testing::unique_schema("bench_sweep");
        config.pool_size = 8;
        if let Some(chunk) = chunk {
            config.sweep_chunk = chunk;
        }
        let store = Arc::new(rt.block_on(PostgresStore::connect(config)).unwrap());
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    // Setup, not measured: 100,000 entries over 1,000
                    // topics, joined through the API by 64 tasks; all
                    // expire at once.
                    let keys = fresh_keys(&next, 100_000, 1_000);
                    rt.block_on(join_concurrently(store.clone(), keys, 64));
                    store.clock().now() + Duration::from_millis(1)
                },
                |cutoff: Timestamp| {
                    let swept = rt.block_on(store.sweep_all(cutoff)).unwrap();
                    assert_eq!(swept.len(), 100_000);
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, joins, heartbeats_and_count, sweeps);
criterion_main!(benches);
