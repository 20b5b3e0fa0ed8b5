//! How long single `join` calls wait on the SQLite store under load, with
//! the WAL checkpointed on its own thread (the default) and inside the
//! writer's commits (SQLite's auto-checkpoint). Run with
//! `cargo run --release -p benches --bin sqlite_join_latency`.
//!
//! Criterion reports mean time per call; what a checkpoint inside a commit
//! costs shows in the tail instead, so this prints percentiles. Both
//! variants run in one process, taking turns, each on its own file: 64
//! tasks joining new keys over 1,000 topics, 96,000 joins per turn.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use presence_core::PresenceStore;
use presence_sqlite::{SqliteConfig, SqliteStore};

const TURNS: usize = 3;
const JOINS: usize = 96_000;
const TASKS: usize = 64;

fn main() {
    let rt = benches::runtime();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let variants = [("background", true), ("in the writer", false)];
    let stores: Vec<Arc<dyn PresenceStore>> = variants
        .iter()
        .map(|(name, background)| {
            let mut config = SqliteConfig::file(dir.path().join(format!("{name}.db")));
            config.background_checkpoints = *background;
            let store = rt.block_on(SqliteStore::open(config)).expect("open");
            Arc::new(store) as Arc<dyn PresenceStore>
        })
        .collect();
    let next: Vec<AtomicUsize> = variants.iter().map(|_| AtomicUsize::new(0)).collect();
    println!("checkpoints    | turn | joins/s | p50 | p99 | p99.9 | max");
    for turn in 1..=TURNS {
        for (i, (name, _)) in variants.iter().enumerate() {
            let keys = benches::fresh_keys(&next[i], JOINS, 1_000);
            let (took, calls) = rt.block_on(benches::join_concurrently_timed(
                stores[i].clone(),
                keys,
                TASKS,
            ));
            let at = |q: f64| calls[((calls.len() - 1) as f64 * q) as usize];
            println!(
                "{name:14} | {turn} | {:.1}k | {} | {} | {} | {}",
                JOINS as f64 / took.as_secs_f64() / 1000.0,
                ms(at(0.5)),
                ms(at(0.99)),
                ms(at(0.999)),
                ms(at(1.0)),
            );
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}
