#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod checkpoint;
mod config;
mod error;
mod schema;
mod sql;
mod store;
mod writer;

pub use config::{Location, SqliteConfig};
pub use presence_core;
pub use rusqlite;
pub use schema::SCHEMA_VERSION;
pub use store::SqliteStore;
pub use writer::WriterStats;

#[doc(hidden)]
pub mod testing {
    //! Hooks for this crate's own upgrade tests; not part of the API.
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
