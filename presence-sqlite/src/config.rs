use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use presence_core::{Clock, DEFAULT_MAX_META_BYTES, Error, Result, system_clock};

/// Where the store keeps its data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A database file, created if missing, in WAL mode.
    File(PathBuf),
    /// A private in-memory database, gone when the store is dropped. Reads
    /// share the writer's connection (an in-memory database has only one).
    Memory,
}

/// How a [`SqliteStore`](crate::SqliteStore) is opened. Plain fields; start
/// from [`SqliteConfig::file`] or [`SqliteConfig::memory`] and change what
/// you need.
#[derive(Clone, Debug)]
pub struct SqliteConfig {
    /// The database file, or memory.
    pub location: Location,
    /// The largest meta accepted, serialized, in bytes.
    pub max_meta_bytes: usize,
    /// How long a call waits for another process holding the write lock
    /// before it fails.
    pub busy_timeout: Duration,
    /// Prepended to every table, index and trigger name, so several stores
    /// can share one file. ASCII letters, digits and `_` only.
    pub table_prefix: String,
    /// Where timestamps come from.
    pub clock: Arc<dyn Clock>,
    /// Events kept per subscribed topic for a slow subscriber.
    pub event_buffer: usize,
    /// Read connections (files only), each owned by a reader thread of the
    /// store. At least 1.
    pub read_connections: usize,
    /// Most calls committed in one transaction by the writer. At least 1.
    pub max_group: usize,
    /// About how many expired entries `sweep_all` removes per turn of the
    /// writer, so that other writes go on between its pieces instead of
    /// waiting for the whole sweep (BENCHMARKS.md). A topic is never split:
    /// a piece takes whole topics until it holds this many entries. At
    /// least 1.
    pub sweep_piece_rows: usize,
    /// The WAL's length, in 4 KiB pages, at which it starts over (files
    /// only): once this many pages are written, the writer finishes
    /// copying them into the file between two transactions. With
    /// `background_checkpoints` the copying happens every tenth of this on
    /// another thread; without it, this is SQLite's `wal_autocheckpoint`.
    /// Larger values trade disk for write throughput under heavy load
    /// (BENCHMARKS.md); durability is the same.
    pub checkpoint_pages: u32,
    /// Copy the WAL into the file on a thread of its own, with a second
    /// connection (files only; default). Off, SQLite checkpoints inside the
    /// commit that crosses `checkpoint_pages`, and every call grouped into
    /// that commit waits for it: tens of milliseconds (BENCHMARKS.md).
    pub background_checkpoints: bool,
}

impl SqliteConfig {
    /// A store in the file at `path`.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Self::at(Location::File(path.into()))
    }

    /// A store in memory.
    pub fn memory() -> Self {
        Self::at(Location::Memory)
    }

    fn at(location: Location) -> Self {
        Self {
            location,
            max_meta_bytes: DEFAULT_MAX_META_BYTES,
            busy_timeout: Duration::from_secs(5),
            table_prefix: "presence_".to_owned(),
            clock: system_clock(),
            event_buffer: 1024,
            read_connections: 4,
            max_group: 1024,
            sweep_piece_rows: 256,
            checkpoint_pages: 10_000,
            background_checkpoints: true,
        }
    }

    /// Refuses settings the store cannot work with, naming the field.
    pub(crate) fn check(&self) -> Result<()> {
        let positive = [
            ("max_meta_bytes", self.max_meta_bytes),
            ("event_buffer", self.event_buffer),
            ("read_connections", self.read_connections),
            ("max_group", self.max_group),
            ("sweep_piece_rows", self.sweep_piece_rows),
            ("checkpoint_pages", self.checkpoint_pages as usize),
        ];
        if let Some((field, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(Error::invalid(field, "must be at least 1"));
        }
        self.checked_prefix()?;
        Ok(())
    }

    /// The table prefix, checked: it is written into SQL as an identifier.
    pub(crate) fn checked_prefix(&self) -> Result<&str> {
        let prefix = self.table_prefix.as_str();
        let valid = prefix.len() <= 64
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !prefix.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            return Err(Error::invalid(
                "table_prefix",
                "must be at most 64 ASCII letters, digits or '_', not starting with a digit",
            ));
        }
        Ok(prefix)
    }
}
