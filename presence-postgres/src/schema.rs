//! Creating, upgrading and checking the store's schema.

use presence_core::{Error, Result};
use tokio_postgres::Client;

use crate::errors::{db, failure};

/// The migrations, in order; the schema version is how many have run.
const MIGRATIONS: &[&str] = &[
    include_str!("../sql/0001_init.sql"),
    include_str!("../sql/0002_faster_joins.sql"),
    include_str!("../sql/0003_sweep_in_pieces.sql"),
];

/// The schema version this code creates and understands.
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

/// The version of `schema`, 0 when it has none (no schema, or no version
/// table). Needs only USAGE on the schema and SELECT on its version table,
/// so a role with no right to create anything can open a current schema.
pub(crate) async fn version(client: &Client, schema: &str) -> Result<usize> {
    let table = format!("{schema}.schema_version");
    let exists: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await
        .map_err(db)?
        .get(0);
    if !exists {
        return Ok(0);
    }
    let found: Option<i32> = client
        .query_one(&format!("SELECT max(version) FROM {table}"), &[])
        .await
        .map_err(db)?
        .get(0);
    Ok(found.unwrap_or(0).max(0) as usize)
}

fn newer(schema: &str, found: usize) -> Error {
    failure(format!(
        "the presence schema {schema:?} is at version {found}, newer than the \
         {SCHEMA_VERSION} this presence-postgres knows; upgrade presence-postgres"
    ))
}

/// Opening a store: nothing to do when `schema` is current; otherwise
/// migrate (when `migrate` is true) or refuse naming the versions.
pub(crate) async fn prepare(client: &mut Client, schema: &str, migrate: bool) -> Result<()> {
    let found = version(client, schema).await?;
    if found == SCHEMA_VERSION {
        return Ok(());
    }
    if found > SCHEMA_VERSION {
        return Err(newer(schema, found));
    }
    if migrate {
        return migrate_to(client, schema, SCHEMA_VERSION).await;
    }
    let state = if found == 0 {
        "does not exist".to_owned()
    } else {
        format!("is at version {found}")
    };
    Err(failure(format!(
        "the presence schema {schema:?} {state}; this presence-postgres needs version \
         {SCHEMA_VERSION}: run `presence migrate` (PostgresStore::migrate) with a role that may \
         create it, or open with migrate_on_open = true"
    )))
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
    let found = found.unwrap_or(0).max(0) as usize;
    if found > SCHEMA_VERSION {
        return Err(newer(schema, found));
    }
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
        tracing::info!(
            schema,
            from = found,
            to = target,
            "presence schema migrated"
        );
    }
    tx.commit().await.map_err(db)
}
