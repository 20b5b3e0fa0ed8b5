//! What the store logs: the event listener's failures at `warn` with their
//! cause (and the cause in the error `connect` returns), batches at
//! `debug`, and never a password. A subscriber of this binary's own
//! captures every event.
#![cfg(feature = "testing")]

use std::sync::Arc;
use std::time::Duration;

use conformance::logs::{captured, logged};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use presence_core::{Meta, PresenceKey, PresenceStore};
use presence_postgres::{PostgresConfig, PostgresStore, testing};
use tracing::Level;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_failures_are_logged_and_returned_with_their_cause() {
    captured();
    let Some(url) = testing::server_url() else {
        return;
    };
    // The app's pool works; the listener's config names a role that does
    // not exist, so each of its attempts fails.
    let pg: tokio_postgres::Config = url.parse().unwrap();
    let manager = Manager::from_config(
        pg.clone(),
        tokio_postgres::NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager).max_size(2).build().unwrap();
    let mut listen = pg;
    listen.user("no_such_role").password("hunter2");
    let mut config = PostgresConfig::new(&url);
    config.schema = testing::unique_schema("logging");
    config.listen_timeout = Duration::from_secs(1);
    let error = tokio::time::timeout(
        Duration::from_secs(60),
        PostgresStore::from_pool(pool, listen, config),
    )
    .await
    .expect("from_pool hung")
    .unwrap_err();
    let text = error.chain().to_string();
    assert!(text.contains("listen_timeout"), "{text}");
    assert!(
        text.contains("no_such_role"),
        "the cause is in the error: {text}"
    );
    let warnings = logged(Level::WARN, "no_such_role");
    assert!(
        warnings.iter().any(|w| w.contains("cannot connect")),
        "the listener's failures were not logged at warn: {:?}",
        captured().all()
    );
    assert!(!format!("{error:?}{:?}", warnings).contains("hunter2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_logged_at_debug_and_passwords_never() {
    captured();
    let Some(url) = testing::server_url() else {
        return;
    };
    // The test server trusts 127.0.0.1, so any password logs in.
    let with_password = url.replacen("presence@", "presence:hunter2@", 1);
    let mut config = PostgresConfig::from_url(&with_password).unwrap();
    config.schema = testing::unique_schema("logging");
    assert!(!format!("{config:?}").contains("hunter2"));
    let store = Arc::new(PostgresStore::connect(config).await.unwrap());
    let joins: Vec<_> = (0..20)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let key = PresenceKey::new("room", format!("m{i}"), "c").unwrap();
                store.join(&key, Meta::new()).await.unwrap();
            })
        })
        .collect();
    for join in joins {
        join.await.unwrap();
    }
    let batches = logged(Level::DEBUG, "postgres batch");
    assert!(
        batches
            .iter()
            .any(|b| b.contains("kind=\"join\"") && b.contains("size=")),
        "{batches:?}"
    );
    store.sweep_all(store.clock().now()).await.unwrap();
    assert!(!logged(Level::DEBUG, "postgres sweep_all").is_empty());
    store.close().await.unwrap();

    // A connect that fails names no password either.
    let refused = "postgres://presence:hunter2@127.0.0.1:1/postgres";
    let mut config = PostgresConfig::from_url(refused).unwrap();
    config.connect_timeout = Duration::from_secs(2);
    if let Err(error) = PostgresStore::connect(config).await {
        assert!(!format!("{error:?} {}", error.chain()).contains("hunter2"));
    }
    let everything = format!("{:?}", captured().all());
    assert!(!everything.contains("hunter2"), "a password was logged");
}
