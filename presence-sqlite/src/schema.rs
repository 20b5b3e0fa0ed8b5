//! Opening connections and upgrading the schema.

use std::time::Duration;

use presence_core::Result;
use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior};

use crate::config::Location;
use crate::error::SqliteError;

/// The migrations, in order; the schema version is how many have run.
const MIGRATIONS: &[&str] = &[
    include_str!("../sql/0001_entries.sql"),
    include_str!("../sql/0002_counts.sql"),
];

/// The schema version this code creates and understands.
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

/// Names a file that is not a database as such; other errors pass.
fn classify(location: &Location, error: SqliteError) -> SqliteError {
    match (location, error) {
        (Location::File(path), SqliteError::Sqlite(source))
            if source.sqlite_error_code() == Some(ErrorCode::NotADatabase) =>
        {
            SqliteError::NotADatabase {
                path: path.clone(),
                source,
            }
        }
        (_, error) => error,
    }
}

/// Opens a connection with the store's settings: the busy timeout, and for
/// files WAL mode with `synchronous = NORMAL` (a committed write survives the
/// process being killed; an OS crash may lose the last commits but never
/// corrupts the file).
pub(crate) fn connect(location: &Location, busy_timeout: Duration) -> Result<Connection> {
    let opened = match location {
        Location::File(path) => Connection::open(path),
        Location::Memory => Connection::open_in_memory(),
    };
    let conn = opened.map_err(|e| classify(location, e.into()))?;
    let configure = |conn: &Connection| -> Result<(), SqliteError> {
        conn.busy_timeout(busy_timeout)?;
        if let Location::File(path) = location {
            let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
            if !mode.eq_ignore_ascii_case("wal") {
                let path = path.clone();
                return Err(SqliteError::NoWal { path, mode });
            }
            conn.pragma_update(None, "synchronous", "NORMAL")?;
        }
        Ok(())
    };
    configure(&conn).map_err(|e| classify(location, e))?;
    Ok(conn)
}

/// Brings the schema of `prefix` up to `target` (normally [`SCHEMA_VERSION`])
/// in one immediate transaction, so processes opening one file at once take
/// turns and each migration runs once. Refuses a schema newer than this code.
pub(crate) fn migrate(
    conn: &mut Connection,
    location: &Location,
    prefix: &str,
    target: usize,
) -> Result<()> {
    let render = |template: &str| template.replace("{p}", prefix);
    let run = |conn: &mut Connection| -> Result<(), SqliteError> {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(&render(
            "CREATE TABLE IF NOT EXISTS {p}schema_version (version INTEGER NOT NULL)",
        ))?;
        let found: Option<i64> = tx
            .query_row(
                &render("SELECT max(version) FROM {p}schema_version"),
                [],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        let found = found.unwrap_or(0);
        if found > SCHEMA_VERSION as i64 {
            return Err(SqliteError::SchemaTooNew {
                prefix: prefix.to_owned(),
                found,
                known: SCHEMA_VERSION,
            });
        }
        let found = found as usize;
        if found < target {
            for migration in &MIGRATIONS[found..target] {
                tx.execute_batch(&render(migration))?;
            }
            tracing::info!(
                prefix,
                from = found,
                to = target,
                "presence-sqlite schema upgraded"
            );
            tx.execute(&render("DELETE FROM {p}schema_version"), [])?;
            tx.execute(
                &render("INSERT INTO {p}schema_version (version) VALUES (?1)"),
                [target as i64],
            )?;
        }
        tx.commit()?;
        Ok(())
    };
    run(conn).map_err(|e| classify(location, e).into())
}

/// Opens the writer's connection and brings the schema to `target`.
///
/// Processes opening one new file at once contend for its first locks, and
/// SQLite answers some of those contentions (switching to WAL mode, reading
/// a schema another process is writing) with "busy" at once instead of
/// waiting for `busy_timeout`: such attempts are retried until it passes.
pub(crate) fn open_and_migrate(
    location: &Location,
    prefix: &str,
    target: usize,
    busy_timeout: Duration,
) -> Result<Connection> {
    let deadline = std::time::Instant::now() + busy_timeout;
    loop {
        let attempt = connect(location, busy_timeout).and_then(|mut conn| {
            migrate(&mut conn, location, prefix, target)?;
            Ok(conn)
        });
        match attempt {
            Err(error) if is_busy(&error) && std::time::Instant::now() < deadline => {
                tracing::debug!(error = %error.chain(), "presence-sqlite open: busy, retrying");
                std::thread::sleep(Duration::from_millis(20));
            }
            result => return result,
        }
    }
}

fn is_busy(error: &presence_core::Error) -> bool {
    let presence_core::Error::Backend { source, .. } = error else {
        return false;
    };
    matches!(
        source.downcast_ref::<SqliteError>(),
        Some(SqliteError::Sqlite(e))
            if matches!(e.sqlite_error_code(), Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked))
    )
}
