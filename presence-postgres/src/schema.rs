//! Creating and upgrading the store's schema.

use presence_core::{Error, Result};
use tokio_postgres::Client;

/// The migrations, in order; the schema version is how many have run.
const MIGRATIONS: &[&str] = &[
    include_str!("../sql/0001_init.sql"),
    include_str!("../sql/0002_faster_joins.sql"),
];

/// The schema version this code creates and understands.
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

pub(crate) fn db(error: tokio_postgres::Error) -> Error {
    Error::backend("postgres", error)
}

/// Brings `schema` up to [`SCHEMA_VERSION`] in one transaction under an
/// advisory lock, so processes starting at once take turns and the schema is
/// created once. Refuses a schema newer than this code.
pub(crate) async fn migrate(client: &mut Client, schema: &str) -> Result<()> {
    migrate_to(client, schema, SCHEMA_VERSION).await
}

/// [`migrate`] up to `target` only (tests build older schemas with it).
pub(crate) async fn migrate_to(client: &mut Client, schema: &str, target: usize) -> Result<()> {
    let render = |template: &str| template.replace("{s}", schema);
    let tx = client.transaction().await.map_err(db)?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('presence migrations'), hashtext($1))",
        &[&schema],
    )
    .await
    .map_err(db)?;
    tx.batch_execute(&render(
        "CREATE SCHEMA IF NOT EXISTS {s};
         CREATE TABLE IF NOT EXISTS {s}.schema_version (version integer NOT NULL);",
    ))
    .await
    .map_err(db)?;
    let found: Option<i32> = tx
        .query_one(&render("SELECT max(version) FROM {s}.schema_version"), &[])
        .await
        .map_err(db)?
        .get(0);
    let found = found.unwrap_or(0);
    if found as usize > SCHEMA_VERSION {
        return Err(Error::backend(
            "postgres",
            format!(
                "the presence schema {schema:?} is at version {found}, newer than the \
                 {SCHEMA_VERSION} this presence-postgres knows; upgrade presence-postgres"
            ),
        ));
    }
    let found = found as usize;
    if found < target {
        for migration in &MIGRATIONS[found..target] {
            tx.batch_execute(&render(migration)).await.map_err(db)?;
        }
        tx.execute(&render("DELETE FROM {s}.schema_version"), &[])
            .await
            .map_err(db)?;
        tx.execute(
            &render("INSERT INTO {s}.schema_version (version) VALUES ($1)"),
            &[&(target as i32)],
        )
        .await
        .map_err(db)?;
    }
    tx.commit().await.map_err(db)
}
