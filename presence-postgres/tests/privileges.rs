//! Least privilege: a role with only USAGE on the schema, DML on its tables
//! and EXECUTE on its functions opens a current schema and uses it fully;
//! migrations are a step of their own (`PostgresStore::migrate`), and
//! `migrate_on_open = false` refuses a missing, older or newer schema
//! clearly, changing nothing.
#![cfg(feature = "testing")]

use futures::StreamExt;
use presence_core::{Event, Meta, PresenceKey, PresenceStore, Topic};
use presence_postgres::{PostgresConfig, PostgresStore, SCHEMA_VERSION, testing};

async fn admin(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

async fn version(client: &tokio_postgres::Client, schema: &str) -> Option<i32> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&format!("{schema}.schema_version")],
        )
        .await
        .unwrap()
        .get(0);
    if !exists {
        return None;
    }
    client
        .query_one(
            &format!("SELECT max(version) FROM {schema}.schema_version"),
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

fn config(url: &str, schema: &str) -> PostgresConfig {
    let mut config = PostgresConfig::new(url);
    config.schema = schema.to_owned();
    config.pool_size = 2;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_without_create_rights_opens_a_current_schema() {
    let Some(url) = testing::server_url() else {
        return;
    };
    let schema = testing::unique_schema("least");
    let role = format!("r_{schema}");
    let admin = admin(&url).await;
    assert_eq!(
        PostgresStore::migrate(&config(&url, &schema))
            .await
            .unwrap(),
        0,
        "migrate found no schema"
    );
    assert_eq!(
        PostgresStore::migrate(&config(&url, &schema))
            .await
            .unwrap(),
        SCHEMA_VERSION,
        "a second migrate finds it current"
    );
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN;
             REVOKE ALL ON DATABASE postgres FROM {role};
             GRANT CONNECT ON DATABASE postgres TO {role};
             GRANT USAGE ON SCHEMA {schema} TO {role};
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role};
             GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA {schema} TO {role};"
        ))
        .await
        .unwrap();
    let role_url = url.replacen("presence@", &format!("{role}@"), 1);
    assert_ne!(role_url, url, "the test server's URL names its user");
    // The role really may not create: what opening did before this fix.
    let plain = self::admin(&role_url).await;
    let refused = plain
        .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
        "{refused}"
    );

    for migrate_on_open in [true, false] {
        let mut limited = config(&role_url, &schema);
        limited.migrate_on_open = migrate_on_open;
        let store = PostgresStore::connect(limited).await.unwrap();
        let room = Topic::new("room").unwrap();
        let mut events = store.subscribe(&room).await.unwrap();
        let key = PresenceKey::new("room", "alice", "tab").unwrap();
        let joined = store.join(&key, Meta::new()).await.unwrap();
        match events.next().await {
            Some(Event::Join { entry, .. }) => assert_eq!(entry, joined.entry),
            other => panic!("expected the join, got {other:?}"),
        }
        assert!(store.touch(&key).await.unwrap());
        assert_eq!(store.members(&room).await.unwrap().len(), 1);
        assert_eq!(store.count(&room).await.unwrap().members, 1);
        assert_eq!(
            store
                .sweep_all(joined.entry.last_seen_at)
                .await
                .unwrap()
                .len(),
            0
        );
        assert!(store.leave(&key).await.unwrap().is_some());
        store.close().await.unwrap();
    }
    drop(plain);
    admin
        .batch_execute(&format!(
            "DROP SCHEMA {schema} CASCADE; DROP OWNED BY {role}; DROP ROLE {role};"
        ))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_migrate_on_open_a_wrong_schema_is_refused_and_left_alone() {
    let Some(url) = testing::server_url() else {
        return;
    };
    let admin = admin(&url).await;
    let strict = |schema: &str| {
        let mut config = config(&url, schema);
        config.migrate_on_open = false;
        config
    };

    let missing = testing::unique_schema("missing");
    let error = PostgresStore::connect(strict(&missing)).await.unwrap_err();
    let text = error.chain().to_string();
    assert!(
        text.contains("does not exist") && text.contains("presence migrate"),
        "{text}"
    );
    assert_eq!(version(&admin, &missing).await, None, "nothing was created");

    let old = testing::unique_schema("old");
    testing::create_schema_at(&url, &old, 1).await.unwrap();
    let error = PostgresStore::connect(strict(&old)).await.unwrap_err();
    let text = error.chain().to_string();
    assert!(
        text.contains("at version 1") && text.contains(&format!("needs version {SCHEMA_VERSION}")),
        "{text}"
    );
    assert_eq!(version(&admin, &old).await, Some(1), "nothing was upgraded");
    assert_eq!(PostgresStore::migrate(&strict(&old)).await.unwrap(), 1);
    assert_eq!(version(&admin, &old).await, Some(SCHEMA_VERSION as i32));
    PostgresStore::connect(strict(&old)).await.unwrap();

    admin
        .execute(
            &format!("UPDATE {old}.schema_version SET version = 99"),
            &[],
        )
        .await
        .unwrap();
    for config in [strict(&old), self::config(&url, &old)] {
        let error = PostgresStore::connect(config).await.unwrap_err();
        assert!(
            error.chain().to_string().contains("newer"),
            "{}",
            error.chain()
        );
    }
    let error = PostgresStore::migrate(&strict(&old)).await.unwrap_err();
    assert!(
        error.chain().to_string().contains("newer"),
        "{}",
        error.chain()
    );
    assert_eq!(version(&admin, &old).await, Some(99));
}
