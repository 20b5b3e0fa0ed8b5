//! The checkpointer: copies the WAL back into the database file on a thread
//! of its own, so that commits never wait for a checkpoint's copying and
//! syncing.
//!
//! SQLite's own auto-checkpoint runs inside the commit that crosses the
//! threshold: that commit, and every caller grouped into it, waits while
//! thousands of pages are copied and the file is synced (30-50 ms per
//! 10,000 pages here, BENCHMARKS.md). Instead, the writer only counts the
//! WAL's frames after each commit and wakes this thread every
//! [`step`](Checkpointer::step) new frames; it runs passive checkpoints,
//! which never block the writer.
//!
//! A passive checkpoint copies the frames committed when it started, and the
//! WAL starts over only once every frame is copied, which under steady
//! writes never happens between two commits. So once the WAL holds
//! `checkpoint_pages` frames, the writer *seals* it: between two of its
//! transactions it copies the few frames committed since the last pass
//! itself, and its next commit starts the WAL over. A pass of the
//! checkpointer's in progress is waited for first: that one wait is what
//! keeps the WAL near `checkpoint_pages` when a loaded machine slows the
//! pass down (committing on meanwhile let it grow to 14 MB for 50 pages).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use rusqlite::Connection;
use rusqlite::hooks::Wal;

thread_local! {
    /// Frames in the WAL after the last commit on this thread, as SQLite's
    /// WAL hook reports them (the hook takes a plain function, so the count
    /// lives here; only the writer thread installs it).
    static WAL_FRAMES: Cell<i64> = const { Cell::new(0) };
}

fn note_frames(_: &Wal, frames: std::ffi::c_int) -> rusqlite::Result<()> {
    WAL_FRAMES.with(|f| f.set(i64::from(frames)));
    Ok(())
}

/// The writer's side of the checkpointer.
#[derive(Debug)]
pub(crate) struct Checkpointer {
    shared: Arc<Shared>,
    /// The WAL's length at which the writer seals it.
    pages: i64,
    /// New frames that wake the checkpointer.
    step: i64,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What the writer and the checkpointer share.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Frames the last checkpoint (either thread's) found copied.
    copied: AtomicI64,
    /// Set by the writer while it seals: the checkpointer starts no pass.
    seal: AtomicBool,
    /// Held by whichever thread runs a checkpoint of ours: a writer that
    /// must seal waits for the checkpointer's pass in progress (one pass,
    /// however slow a loaded machine makes it) instead of committing on
    /// and letting the WAL grow past `checkpoint_pages` meanwhile.
    pass: Mutex<()>,
    /// Checkpoints the checkpointer ran, and the writer's seals.
    passes: AtomicU64,
    seals: AtomicU64,
    wake: Mutex<Wake>,
    signal: Condvar,
}

/// What the writer last asked of the checkpointer.
#[derive(Debug, PartialEq)]
enum Wake {
    Idle,
    Copy,
    Stop,
}

impl Checkpointer {
    /// Takes over checkpoints for the writer connection `writer` (whose own
    /// auto-checkpoint is turned off) with `conn`, a second connection to
    /// the same file, on a thread of its own.
    pub(crate) fn spawn(
        writer: &Connection,
        conn: Connection,
        pages: u32,
    ) -> std::io::Result<Self> {
        // Replaces SQLite's auto-checkpoint hook, turning it off.
        writer.wal_hook(Some(note_frames));
        let pages = i64::from(pages.max(1));
        let shared = Arc::new(Shared {
            copied: AtomicI64::new(0),
            seal: AtomicBool::new(false),
            pass: Mutex::new(()),
            passes: AtomicU64::new(0),
            seals: AtomicU64::new(0),
            wake: Mutex::new(Wake::Idle),
            signal: Condvar::new(),
        });
        let thread = shared.clone();
        let thread = std::thread::Builder::new()
            .name("presence-sqlite-checkpointer".into())
            .spawn(move || run(&conn, &thread))?;
        Ok(Self {
            shared,
            pages,
            step: (pages / 10).max(1),
            thread: Some(thread),
        })
    }

    /// What the writer's stats read: the checkpoints so far.
    pub(crate) fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Called by the writer, on its thread, after each commit.
    pub(crate) fn committed(&self, writer: &Connection) {
        let shared = &*self.shared;
        let frames = WAL_FRAMES.with(Cell::get);
        if frames >= self.pages {
            // No commit can come in between, and the checkpointer starts no
            // pass while this is set; one it is running is waited for.
            // Another process's checkpoint makes this one busy, and the
            // next commit tries again.
            shared.seal.store(true, Ordering::Release);
            let start = std::time::Instant::now();
            let _pass = shared.pass.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(copied) = passive_checkpoint(writer) {
                shared.copied.store(copied, Ordering::Release);
                shared.seal.store(false, Ordering::Release);
                shared.seals.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(frames, took = ?start.elapsed(), "presence-sqlite sealed the WAL");
            }
            return;
        }
        let copied = shared.copied.load(Ordering::Acquire);
        // Fewer frames than were copied: the WAL started over.
        let new = if frames >= copied {
            frames - copied
        } else {
            frames
        };
        if new >= self.step {
            let mut wake = shared.wake.lock().unwrap_or_else(|e| e.into_inner());
            if *wake != Wake::Stop {
                *wake = Wake::Copy;
                shared.signal.notify_one();
            }
        }
    }
}

impl Shared {
    /// Checkpoints run by the checkpointer thread, and by the writer when it
    /// sealed the WAL.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.passes.load(Ordering::Relaxed),
            self.seals.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        *self.shared.wake.lock().unwrap_or_else(|e| e.into_inner()) = Wake::Stop;
        self.shared.signal.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Runs a passive checkpoint; returns the frames it found copied, or
/// `None` if it could not run (another process's checkpoint was running).
fn passive_checkpoint(conn: &Connection) -> Option<i64> {
    let (busy, copied) = conn
        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(2)?))
        })
        .inspect_err(|error| tracing::warn!(%error, "presence-sqlite: a checkpoint failed"))
        .ok()?;
    (busy == 0 && copied >= 0).then_some(copied)
}

fn run(conn: &Connection, shared: &Shared) {
    loop {
        {
            let mut wake = shared.wake.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                match std::mem::replace(&mut *wake, Wake::Idle) {
                    Wake::Stop => return,
                    Wake::Copy => break,
                    Wake::Idle => {
                        wake = shared.signal.wait(wake).unwrap_or_else(|e| e.into_inner());
                    }
                }
            }
        }
        let _pass = shared.pass.lock().unwrap_or_else(|e| e.into_inner());
        if shared.seal.load(Ordering::Acquire) {
            continue;
        }
        // Copies every frame committed by now; another process's checkpoint
        // in progress makes it copy nothing.
        let start = std::time::Instant::now();
        if let Some(copied) = passive_checkpoint(conn) {
            shared.copied.store(copied, Ordering::Release);
            shared.passes.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(copied, took = ?start.elapsed(), "presence-sqlite checkpoint");
        }
    }
}
