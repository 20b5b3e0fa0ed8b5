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

fn classify(location: &Location, error: rusqlite::Error) -> SqliteError {
    match (&location, error.sqlite_error_code()) {
        (Location::File(path), Some(ErrorCode::NotADatabase)) => SqliteError::NotADatabase {
            path: path.clone(),
            source: error,
        },
        _ => SqliteError::Sqlite(error),
    }
}

/// Opens a connection with the store's settings: the busy timeout, and for
/// files WAL mode with `synchronous = NORMAL` (a committed write survives the
/// process being killed; only an OS crash may lose the last commits).
pub(crate) fn connect(location: &Location, busy_timeout: Duration) -> Result<Connection> {
    let opened = match location {
        Location::File(path) => Connection::open(path),
        Location::Memory => Connection::open_in_memory(),
    };
    let conn = opened.map_err(|e| classify(location, e))?;
    let configure = |conn: &Connection| -> rusqlite::Result<()> {
        conn.busy_timeout(busy_timeout)?;
        if let Location::File(_) = location {
            let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
            debug_assert_eq!(mode.to_ascii_lowercase(), "wal");
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
            tx.execute(&render("DELETE FROM {p}schema_version"), [])?;
            tx.execute(
                &render("INSERT INTO {p}schema_version (version) VALUES (?1)"),
                [target as i64],
            )?;
        }
        tx.commit()?;
        Ok(())
    };
    run(conn).map_err(|error| match error {
        SqliteError::Sqlite(e) => classify(location, e).into(),
        other => other.into(),
    })
}
