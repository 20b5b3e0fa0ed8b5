//! Resident memory per entry of the memory store. Run with
//! `cargo run --release -p benches --bin footprint`.
//!
//! Reads the process's resident set from /proc/self/statm before and after
//! filling a store with 1,000,000 entries (short ids, empty meta), so it
//! counts everything the store holds: entries, counts, the expiry order and
//! the member index.

use presence_core::{Meta, PresenceKey, PresenceStore};
use presence_memory::MemoryStore;

const ENTRIES: usize = 1_000_000;

/// Fills a fresh store with the keys `key(i)` for `i` in `0..ENTRIES` and
/// returns the resident growth per entry.
fn measure(rt: &tokio::runtime::Runtime, key: impl Fn(usize) -> PresenceKey) -> f64 {
    let before = benches::resident_bytes();
    let store = MemoryStore::new();
    rt.block_on(async {
        for i in 0..ENTRIES {
            // The key is dropped after the call: the store keeps only what
            // it needs.
            store.join(&key(i), Meta::new()).await.expect("join");
        }
    });
    let after = benches::resident_bytes();
    let per_entry = (after - before) as f64 / ENTRIES as f64;
    drop(store);
    per_entry
}

/// The layouts measured, each in a process of its own so memory freed by one
/// cannot hide the cost of the next.
fn layout(which: usize) -> (&'static str, fn(usize) -> PresenceKey) {
    match which {
        0 => (
            "10,000 topics x 100 members, 1 connection each, every member distinct",
            |i| PresenceKey::new(format!("t{}", i % 10_000), format!("u{i}"), "c").unwrap(),
        ),
        _ => (
            "1,000 topics x 1,000 members, each member in every topic",
            |i| {
                PresenceKey::new(format!("t{}", i / 1_000), format!("u{}", i % 1_000), "c").unwrap()
            },
        ),
    }
}

fn main() {
    let mut args = std::env::args();
    let program = args.next().expect("program name");
    match args.next() {
        Some(which) => {
            let (name, key) = layout(which.parse().expect("layout number"));
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime");
            let per_entry = measure(&rt, key);
            println!("{per_entry:>7.1} bytes/entry resident  ({ENTRIES} entries; {name})");
        }
        None => {
            for which in 0..2 {
                let status = std::process::Command::new(&program)
                    .arg(which.to_string())
                    .status()
                    .expect("run a layout");
                assert!(status.success(), "layout {which} failed");
            }
        }
    }
}
