//! What subscriptions cost: bytes allocated and resident memory per idle
//! subscription, and what is left after 10,000 topics were subscribed once
//! and dropped (topics never written again: a browser that opened a room
//! and left). Run with
//! `cargo run --release -p benches --bin subscriptions [memory|sqlite|postgres|redis]`
//! (default: all four; Postgres and Redis need a server, see
//! `presence_postgres::testing` and `presence_redis::testing`).

use std::alloc::System;
use std::time::Duration;

use presence_core::{PresenceStore, Topic};

#[global_allocator]
static ALLOCATED: cap::Cap<System> = cap::Cap::new(System, usize::MAX);

const TOPICS: usize = 10_000;

fn mib(bytes: isize) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

async fn measure(name: &str, store: &dyn PresenceStore) {
    let topics: Vec<Topic> = (0..TOPICS)
        .map(|i| Topic::new(format!("room/{i}")).unwrap())
        .collect();
    // Warm up what the store allocates once.
    for topic in topics.iter().take(100) {
        drop(store.subscribe(topic).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (heap0, rss0) = (
        ALLOCATED.allocated() as isize,
        benches::resident_bytes() as isize,
    );
    let mut held = Vec::with_capacity(TOPICS);
    for topic in &topics {
        held.push(store.subscribe(topic).await.unwrap());
    }
    let (heap1, rss1) = (
        ALLOCATED.allocated() as isize,
        benches::resident_bytes() as isize,
    );
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (heap2, rss2) = (
        ALLOCATED.allocated() as isize,
        benches::resident_bytes() as isize,
    );
    println!(
        "{name:>8}: {TOPICS} idle subscriptions: {} B allocated and {} B resident each; \
         after dropping them: {} still allocated, {} resident above the start",
        (heap1 - heap0) / TOPICS as isize,
        (rss1 - rss0) / TOPICS as isize,
        mib(heap2 - heap0),
        mib(rss2 - rss0),
    );
}

fn main() {
    let which: Vec<String> = std::env::args().skip(1).collect();
    let wanted = |name: &str| which.is_empty() || which.iter().any(|w| w == name);
    let rt = benches::runtime();
    rt.block_on(async {
        if wanted("memory") {
            let store = presence_memory::MemoryStore::new();
            measure("memory", &store).await;
        }
        if wanted("sqlite") {
            let dir = tempfile::tempdir().unwrap();
            let config = presence_sqlite::SqliteConfig::file(dir.path().join("p.db"));
            let store = presence_sqlite::SqliteStore::open(config).await.unwrap();
            measure("sqlite", &store).await;
        }
        if wanted("postgres") {
            match presence_postgres::testing::server_url() {
                Some(_) => {
                    let config = presence_postgres::testing::store_config("subs");
                    let store = presence_postgres::PostgresStore::connect(config)
                        .await
                        .unwrap();
                    measure("postgres", &store).await;
                }
                None => println!("postgres: no server, skipped"),
            }
        }
        if wanted("redis") {
            match presence_redis::testing::server_url() {
                Some(_) => {
                    let config = presence_redis::testing::store_config("subs");
                    let store = presence_redis::RedisStore::connect(config).await.unwrap();
                    measure("redis", &store).await;
                }
                None => println!("redis: no server, skipped"),
            }
        }
    });
}
