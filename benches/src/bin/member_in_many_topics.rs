//! One member in very many topics, on the memory store: how long its
//! departure takes as the number of topics doubles (linear means the time
//! doubles too). Run with
//! `cargo run --release -p benches --bin member_in_many_topics`.
//!
//! Each size is filled through the API (one join per topic), then the
//! member's entries are swept (`sweep_all`) or disconnected, timed alone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use presence_core::{Clock, ManualClock, MemberId, Meta, PresenceKey, PresenceStore, Timestamp};
use presence_memory::{MemoryConfig, MemoryStore};

async fn filled(topics: usize) -> (MemoryStore, ManualClock) {
    let clock = ManualClock::new(Timestamp::from_millis(1_000_000));
    let store = MemoryStore::with_config(MemoryConfig {
        clock: Arc::new(clock.clone()),
        ..MemoryConfig::default()
    });
    for i in 0..topics {
        let key = PresenceKey::new(format!("room/{i}"), "alice", "tab").unwrap();
        store.join(&key, Meta::new()).await.unwrap();
    }
    (store, clock)
}

fn main() {
    let rt = benches::runtime();
    // `member_in_many_topics 160000` measures one size (for valgrind's
    // instruction counts, which the machine's load does not move).
    let only: Option<usize> = std::env::args().nth(1).and_then(|n| n.parse().ok());
    let all = [10_000, 20_000, 40_000, 80_000, 160_000];
    let sizes: Vec<usize> = only.map_or_else(|| all.to_vec(), |n| vec![n]);
    let mut first = None;
    rt.block_on(async {
        println!("topics   sweep_all   disconnect   (sweep time / 10k's)");
        for topics in sizes {
            let (store, clock) = filled(topics).await;
            clock.advance(Duration::from_secs(60));
            let started = Instant::now();
            let swept = store.sweep_all(clock.now()).await.unwrap();
            let sweep = started.elapsed();
            assert_eq!(swept.len(), topics);

            let (store, _) = filled(topics).await;
            let started = Instant::now();
            let gone = store
                .disconnect(&MemberId::new("alice").unwrap(), &"tab".try_into().unwrap())
                .await
                .unwrap();
            let disconnect = started.elapsed();
            assert_eq!(gone.len(), topics);

            let base = *first.get_or_insert(sweep.as_secs_f64());
            println!(
                "{topics:>7}   {:>8.1} ms   {:>8.1} ms   {:.1}x",
                sweep.as_secs_f64() * 1e3,
                disconnect.as_secs_f64() * 1e3,
                sweep.as_secs_f64() / base,
            );
        }
    });
}
