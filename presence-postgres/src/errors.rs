//! The store's own failures, kept typed as the sources of `Error::Backend`.

use std::time::Duration;

use presence_core::Error;

/// The backend name every error and metric of this store carries.
pub(crate) const BACKEND: &str = "postgres";

/// Something the store waited for took longer than its setting allows.
/// The source of an `Error::Backend`; its text names what timed out and the
/// setting that bounds it.
#[derive(Debug, thiserror::Error)]
#[error("{what} timed out after {after:?} (the store's `{setting}`)")]
pub struct Timeout {
    /// What was waited for: "connecting to the server", "the call", ...
    pub what: &'static str,
    /// How long the store waited.
    pub after: Duration,
    /// The [`PostgresConfig`](crate::PostgresConfig) field that sets the bound.
    pub setting: &'static str,
    /// The last failure seen while waiting, if any (say, why the event
    /// listener's connection attempts failed).
    #[source]
    pub cause: Option<Error>,
}

/// A failure of the store with no driver error beneath it (a closed pool,
/// a batch answered wrongly, a refused schema).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Failure(pub(crate) String);

pub(crate) fn timeout(what: &'static str, after: Duration, setting: &'static str) -> Error {
    Error::backend(
        BACKEND,
        Timeout {
            what,
            after,
            setting,
            cause: None,
        },
    )
}

pub(crate) fn failure(why: impl Into<String>) -> Error {
    Error::backend(BACKEND, Failure(why.into()))
}

/// A driver error, kept as the source.
pub(crate) fn db(error: tokio_postgres::Error) -> Error {
    Error::backend(BACKEND, error)
}

/// A pool error: its timeouts named by the settings that bound them, its
/// driver errors kept typed.
pub(crate) fn pool(error: deadpool_postgres::PoolError, config: &crate::PostgresConfig) -> Error {
    use deadpool_postgres::{PoolError, TimeoutType};
    match error {
        PoolError::Timeout(TimeoutType::Wait) => timeout(
            "waiting for a free pooled connection",
            config.pool_wait_timeout,
            "pool_wait_timeout",
        ),
        PoolError::Timeout(TimeoutType::Create) => timeout(
            "connecting to the server",
            config.pool_create_timeout,
            "pool_create_timeout",
        ),
        PoolError::Timeout(TimeoutType::Recycle) => timeout(
            "checking a pooled connection",
            config.pool_recycle_timeout,
            "pool_recycle_timeout",
        ),
        PoolError::Backend(error) => db(error),
        PoolError::Closed => Error::Closed { backend: BACKEND },
        other => Error::backend(BACKEND, other),
    }
}

/// An error and its causes on one line, for logs.
pub(crate) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        let shown = next.to_string();
        if !text.ends_with(&shown) {
            text.push_str(": ");
            text.push_str(&shown);
        }
        cause = next.source();
    }
    text
}
