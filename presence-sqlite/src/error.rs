use std::path::PathBuf;

use presence_core::Error;

/// What can go wrong underneath; callers see it as `Error::Backend`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SqliteError {
    #[error("{path}: not a SQLite database ({source})")]
    NotADatabase {
        path: PathBuf,
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
    #[error("a stored row is not valid presence data: {0}")]
    CorruptRow(String),
    #[error("the transaction was not committed: {0}")]
    Commit(String),
    #[error("the store's writer thread has stopped")]
    WriterGone,
    #[error("read connection pool: {0}")]
    Pool(String),
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
}

impl From<SqliteError> for Error {
    fn from(error: SqliteError) -> Self {
        Error::backend("sqlite", error)
    }
}

/// Maps a driver error into the contract's error.
pub(crate) fn db(error: rusqlite::Error) -> Error {
    SqliteError::Sqlite(error).into()
}
