#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod checkpoint;
mod config;
mod error;
mod reader;
mod schema;
mod sql;
mod store;
mod thread;
mod writer;

pub use config::{Location, SqliteConfig};
pub use presence_core;
pub use rusqlite;
pub use schema::SCHEMA_VERSION;
pub use store::SqliteStore;
pub use writer::WriterStats;

/// Hooks for tests that need a database as an older release of this crate
/// left it. Behind the `testing` feature: not part of the stable API.
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing {
    use super::*;

    /// Creates the schema of `prefix` in `path` only up to `version`, as an
    /// older release of this crate would have left it.
    pub fn create_schema_at(
        path: &std::path::Path,
        prefix: &str,
        version: usize,
    ) -> presence_core::Result<()> {
        let location = Location::File(path.to_owned());
        schema::open_and_migrate(
            &location,
            prefix,
            version,
            std::time::Duration::from_secs(5),
        )
        .map(drop)
    }
}
