//! What subscriptions cost: the bytes allocated for 10,000 idle
//! subscriptions (one per topic), and what is left once they are dropped,
//! on the memory store and on a SQLite file. Run with
//! `cargo run --release -p benches --bin subscription_footprint`.
//!
//! A counting global allocator (the `cap` crate) reads the bytes the
//! process has allocated at each step, so it counts everything the store
//! and its event fan-out keep per subscription.

use std::sync::Arc;

use presence_core::{PresenceStore, Topic};
use presence_memory::MemoryStore;
use presence_sqlite::{SqliteConfig, SqliteStore};

#[global_allocator]
static ALLOCATED: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

const TOPICS: usize = 10_000;

/// Subscribes to `TOPICS` topics, holds the streams, drops them; prints
/// the bytes per idle subscription and the bytes left after the drop.
async fn measure(name: &str, store: Arc<dyn PresenceStore>) {
    let topics: Vec<Topic> = (0..TOPICS)
        .map(|i| Topic::new(format!("room/{i}")).expect("valid topic"))
        .collect();
    // Whatever the store allocates once, and the topics' own ids, come
    // before the first reading.
    for topic in topics.iter().take(100) {
        drop(store.subscribe(topic).await.expect("subscribe"));
    }
    let before = ALLOCATED.allocated();
    let mut held = Vec::with_capacity(TOPICS);
    for topic in &topics {
        held.push(store.subscribe(topic).await.expect("subscribe"));
    }
    let open = ALLOCATED.allocated().saturating_sub(before);
    drop(held);
    let left = ALLOCATED.allocated() as i64 - before as i64;
    // A second round over the same topics: what stays after the first is
    // capacity kept for reuse (the registry's hash table), not growth.
    let held: Vec<_> = futures::future::join_all(topics.iter().map(|t| store.subscribe(t))).await;
    drop(held);
    let again = ALLOCATED.allocated() as i64 - before as i64;
    println!(
        "{name:8} | {TOPICS} subscribed: {:.1} KiB, {} bytes per idle subscription | after dropping them: {left} bytes | after a second round: {again} bytes",
        open as f64 / 1024.0,
        open / TOPICS,
    );
    store.close().await.expect("close");
}

fn main() {
    let rt = benches::runtime();
    let dir = tempfile::tempdir().expect("a temporary directory");
    rt.block_on(async {
        measure("memory", Arc::new(MemoryStore::new())).await;
        let sqlite = SqliteStore::open(SqliteConfig::file(dir.path().join("subs.db")))
            .await
            .expect("open");
        measure("sqlite", Arc::new(sqlite)).await;
    });
}
