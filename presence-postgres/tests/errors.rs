//! A batched call that the server fails keeps the server's error: every
//! caller of the batch finds the SQLSTATE in its error's source chain, and
//! the message names the backend once.
#![cfg(feature = "testing")]

use std::sync::Arc;
use std::time::Duration;

use presence_core::{Error, Meta, PresenceKey, PresenceStore, SharedSource};
use presence_postgres::{PostgresConfig, PostgresStore, testing};
use tokio_postgres::error::{DbError, SqlState};

fn db_error(error: &Error) -> Option<&DbError> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = cause {
        if let Some(db) = error.downcast_ref::<DbError>() {
            return Some(db);
        }
        if let Some(db) = error
            .downcast_ref::<tokio_postgres::Error>()
            .and_then(|e| e.as_db_error())
        {
            return Some(db);
        }
        cause = error.source();
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_timeout_in_a_batch_reaches_every_caller_typed() {
    let Some(url) = testing::server_url() else {
        return;
    };
    let schema = testing::unique_schema("errors");
    let mut config = PostgresConfig::new(&url);
    config.schema = schema.clone();
    PostgresStore::migrate(&config).await.unwrap();
    // This store's statements are cancelled by the server after 300 ms.
    let mut slow =
        PostgresConfig::from_url(&format!("{url}?options=-c%20statement_timeout%3D300")).unwrap();
    slow.schema = schema.clone();
    let store = Arc::new(PostgresStore::connect(slow).await.unwrap());

    // Hold the topic's lock, so the join batch waits until the timeout.
    let (admin, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    admin
        .execute(
            "SELECT pg_advisory_lock(hashtext($1), hashtext('room'))",
            &[&schema],
        )
        .await
        .unwrap();

    let joins: Vec<_> = (0..16)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let key = PresenceKey::new("room", format!("m{i}"), "c").unwrap();
                tokio::time::timeout(Duration::from_secs(60), store.join(&key, Meta::new()))
                    .await
                    .expect("a join hung")
            })
        })
        .collect();
    let mut shared = 0;
    for join in joins {
        let error = join.await.unwrap().unwrap_err();
        assert!(
            matches!(
                error,
                Error::Backend {
                    backend: "postgres",
                    ..
                }
            ),
            "{error:?}"
        );
        let text = error.to_string();
        assert_eq!(text.matches("postgres backend").count(), 1, "{text}");
        let db = db_error(&error)
            .unwrap_or_else(|| panic!("no DbError in the chain of {}", error.chain()));
        assert_eq!(db.code(), &SqlState::QUERY_CANCELED, "{}", error.chain());
        assert!(
            error.chain().to_string().contains("statement timeout"),
            "{}",
            error.chain()
        );
        if let Error::Backend { source, .. } = &error
            && source.downcast_ref::<SharedSource>().is_some()
        {
            shared += 1;
        }
    }
    assert!(shared > 0, "no join shared a batch's failure");

    admin
        .execute(
            "SELECT pg_advisory_unlock(hashtext($1), hashtext('room'))",
            &[&schema],
        )
        .await
        .unwrap();
    let key = PresenceKey::new("room", "after", "c").unwrap();
    store.join(&key, Meta::new()).await.unwrap();
}
