//! How long single `join` calls wait on the SQLite store under load, and
//! how much the disk writes for each join, with the WAL checkpointed on its
//! own thread (the default) and inside the writer's commits (SQLite's
//! auto-checkpoint). Run with
//! `cargo run --release -p benches --bin sqlite_join_latency`.
//!
//! Criterion reports mean time per call; what a checkpoint inside a commit
//! costs shows in the tail instead, so this prints percentiles. Both
//! variants run in one process, taking turns, each on its own file: 64
//! tasks joining new keys over 1,000 topics, 96,000 joins per turn.
//!
//! On Linux each turn also reports what the block device under the
//! temporary directory wrote (from `/proc/diskstats`) per join and per
//! second, and the run ends by timing 1 GiB of sequential writes with one
//! `fdatasync` there: what plain appends reach on that device, for
//! comparison (the store's mix of appends, scattered copies and frequent
//! syncs gets less).

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Instant;

use benches::ms;

use presence_core::PresenceStore;
use presence_sqlite::{SqliteConfig, SqliteStore};

const TURNS: usize = 3;
const JOINS: usize = 96_000;
const TASKS: usize = 64;

fn main() {
    let rt = benches::runtime();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let disk = Disk::under(dir.path());
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
    println!(
        "checkpoints    | turn | joins/s | p50 | p99 | p99.9 | max | disk KiB/join | disk MB/s"
    );
    for turn in 1..=TURNS {
        for (i, (name, _)) in variants.iter().enumerate() {
            let keys = benches::fresh_keys(&next[i], JOINS, 1_000);
            let before = disk.as_ref().map(|disk| (disk, disk.written()));
            let (took, calls) = rt.block_on(benches::join_concurrently_timed(
                stores[i].clone(),
                keys,
                TASKS,
            ));
            let at = |q: f64| benches::percentile(&calls, q);
            let (per_join, rate) = match before {
                Some((disk, before)) => {
                    let bytes = disk.written().saturating_sub(before) as f64;
                    (
                        format!("{:.1}", bytes / 1024.0 / JOINS as f64),
                        format!("{:.0}", bytes / 1e6 / took.as_secs_f64()),
                    )
                }
                None => ("n/a".to_owned(), "n/a".to_owned()),
            };
            println!(
                "{name:14} | {turn} | {:.1}k | {} | {} | {} | {} | {per_join} | {rate}",
                JOINS as f64 / took.as_secs_f64() / 1000.0,
                ms(at(0.5)),
                ms(at(0.99)),
                ms(at(0.999)),
                ms(at(1.0)),
            );
        }
    }
    drop(stores);
    match sequential_write(dir.path()) {
        Ok(rate) => println!("sequential write with one fdatasync, same directory: {rate:.0} MB/s"),
        Err(error) => println!("sequential write: {error}"),
    }
}

/// The block device a directory is on, as `/proc/diskstats` names it.
struct Disk {
    major: u64,
    minor: u64,
}

impl Disk {
    /// `None` where there is no `/proc/diskstats` (not Linux) or the
    /// directory is on no block device listed there (tmpfs).
    fn under(path: &std::path::Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let dev = std::fs::metadata(path).ok()?.dev();
        // Linux's encoding of a device number (glibc's gnu_dev_major/minor).
        let disk = Self {
            major: ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff),
            minor: (dev & 0xff) | ((dev >> 12) & !0xff),
        };
        disk.sectors().map(|_| disk)
    }

    /// Bytes the device has written since it started.
    fn written(&self) -> u64 {
        self.sectors().unwrap_or(0) * 512
    }

    fn sectors(&self) -> Option<u64> {
        let stats = std::fs::read_to_string("/proc/diskstats").ok()?;
        stats.lines().find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let ours = fields.first()?.parse() == Ok(self.major)
                && fields.get(1)?.parse() == Ok(self.minor);
            // Field 10 of a line (index 9) is sectors written.
            ours.then(|| fields.get(9)?.parse().ok()).flatten()
        })
    }
}

/// Writes 1 GiB to a file in `dir` and syncs it; returns MB/s.
fn sequential_write(dir: &std::path::Path) -> std::io::Result<f64> {
    use std::io::Write;
    let path = dir.join("sequential");
    let mut file = std::fs::File::create(&path)?;
    let chunk = vec![0x5a_u8; 1 << 20];
    let start = Instant::now();
    for _ in 0..1024 {
        file.write_all(&chunk)?;
    }
    file.sync_data()?;
    let rate = (1u64 << 30) as f64 / 1e6 / start.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(rate)
}
