use std::path::PathBuf;

use presence_core::Error;

/// The store's name in errors, metrics and logs.
pub(crate) const BACKEND: &str = "sqlite";

/// What can go wrong underneath; callers see it as `Error::Backend`, whose
/// source chain reaches the driver's own error.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SqliteError {
    #[error("{path}: not a SQLite database")]
    NotADatabase {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "the presence schema (prefix {prefix:?}) is at version {found}, newer than the \
         {known} this presence-sqlite knows; upgrade presence-sqlite to open it"
    )]
    SchemaTooNew {
        prefix: String,
        found: i64,
        known: usize,
    },
    #[error(
        "{path}: SQLite refused WAL mode (journal mode is {mode:?}); the store needs WAL, which some network file systems lack"
    )]
    NoWal { path: PathBuf, mode: String },
    /// The group's transaction itself failed (BEGIN, a savepoint, COMMIT):
    /// every call of the group fails with this one error, shared.
    #[error("the write transaction of {calls} calls was not committed")]
    Commit {
        calls: usize,
        #[source]
        source: rusqlite::Error,
    },
    #[error("could not start the store's {thread} thread")]
    Thread {
        thread: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the store's {0} thread stopped unexpectedly")]
    ThreadGone(&'static str),
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
}

impl From<SqliteError> for Error {
    fn from(error: SqliteError) -> Self {
        Error::backend(BACKEND, error)
    }
}

/// Maps a driver error into the contract's error.
pub(crate) fn db(error: rusqlite::Error) -> Error {
    SqliteError::Sqlite(error).into()
}

/// The error of a call made on (or racing) a closed store.
pub(crate) fn closed() -> Error {
    Error::Closed { backend: BACKEND }
}
