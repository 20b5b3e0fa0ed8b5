//! `sweep_all` in pieces: with pieces far smaller than the expired set,
//! every expired entry is removed and reported once, in the contract's
//! order, with exact `last_for_member` flags and counts, also when several
//! stores (separate pools, as separate processes would have) sweep at once.
#![cfg(feature = "testing")]

use std::collections::BTreeSet;
use std::sync::Arc;

use presence_core::{Clock, ManualClock, Meta, PresenceKey, PresenceStore, Timestamp, Topic};
use presence_postgres::{PostgresConfig, PostgresStore, testing};

fn config(schema: &str, clock: &ManualClock) -> PostgresConfig {
    let mut config = testing::store_config("sweeps");
    config.schema = schema.to_owned();
    config.sweep_chunk = 7;
    config.pool_size = 2;
    config.clock = Arc::new(clock.clone());
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweeping_in_small_pieces_reports_each_entry_once() {
    if testing::unavailable().is_some() {
        eprintln!("SKIPPED: no Postgres server");
        return;
    }
    let schema = testing::unique_schema("sweeps");
    let clock = ManualClock::new(Timestamp::from_millis(1_000_000));
    let stores: Vec<Arc<PostgresStore>> = futures::future::try_join_all(
        (0..3).map(|_| PostgresStore::connect(config(&schema, &clock))),
    )
    .await
    .unwrap()
    .into_iter()
    .map(Arc::new)
    .collect();
    // 30 topics; members with one or two connections; the last member of
    // each topic joins later and stays.
    let mut expired = BTreeSet::new();
    for t in 0..30 {
        for m in 0..4 {
            for c in 0..(1 + m % 2) {
                let key =
                    PresenceKey::new(format!("t{t:02}"), format!("m{m}"), format!("c{c}")).unwrap();
                stores[0].join(&key, Meta::new()).await.unwrap();
                expired.insert(key);
            }
        }
    }
    clock.advance(std::time::Duration::from_secs(60));
    let cutoff = clock.now();
    for t in 0..30 {
        let key = PresenceKey::new(format!("t{t:02}"), "stays", "c").unwrap();
        stores[0].join(&key, Meta::new()).await.unwrap();
    }

    let sweeps = stores.iter().map(|store| {
        let store = store.clone();
        tokio::spawn(async move { store.sweep_all(cutoff).await.unwrap() })
    });
    let mut reported = Vec::new();
    for sweep in sweeps {
        let departures = sweep.await.unwrap();
        let keys: Vec<(String, String, String)> = departures
            .iter()
            .map(|d| {
                let k = &d.entry.key;
                (
                    k.topic.to_string(),
                    k.member.to_string(),
                    k.connection.to_string(),
                )
            })
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(
            keys, sorted,
            "one sweeper's departures are in the contract's order"
        );
        for d in &departures {
            // The last connection of each member in a topic carries the flag.
            let k = &d.entry.key;
            let last_connection = if k.member.as_str().ends_with(['1', '3']) {
                "c1"
            } else {
                "c0"
            };
            assert_eq!(
                d.last_for_member,
                k.connection.as_str() == last_connection,
                "{k}"
            );
        }
        reported.extend(departures.into_iter().map(|d| d.entry.key));
    }
    let unique: BTreeSet<PresenceKey> = reported.iter().cloned().collect();
    assert_eq!(unique.len(), reported.len(), "no entry reported twice");
    assert_eq!(unique, expired, "every expired entry reported");
    for t in 0..30 {
        let topic = Topic::new(format!("t{t:02}")).unwrap();
        let counts = stores[1].count(&topic).await.unwrap();
        assert_eq!((counts.members, counts.connections), (1, 1), "{topic}");
        let members = stores[2].members(&topic).await.unwrap();
        assert_eq!(members.len(), 1);
        assert_eq!(members[0].member.as_str(), "stays");
    }
}

/// A mass expiry does not hold every topic until it ends: while another
/// connection holds the lock of the last topic in the sweep's order, the
/// pieces before it are already committed (visible to other connections),
/// and the sweep finishes once the lock is let go. A sweep in one
/// transaction would show nothing removed until the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pieces_commit_while_a_later_topic_is_locked() {
    if testing::unavailable().is_some() {
        eprintln!("SKIPPED: no Postgres server");
        return;
    }
    let schema = testing::unique_schema("pieces");
    let clock = ManualClock::new(Timestamp::from_millis(1_000_000));
    let store = Arc::new(
        PostgresStore::connect(config(&schema, &clock))
            .await
            .unwrap(),
    );
    let mut expired = BTreeSet::new();
    for t in 0..10 {
        for m in 0..6 {
            let key = PresenceKey::new(format!("t{t:02}"), format!("m{m}"), "c").unwrap();
            store.join(&key, Meta::new()).await.unwrap();
            expired.insert(key);
        }
    }
    clock.advance(std::time::Duration::from_secs(60));
    let cutoff = clock.now();

    let url = testing::server_url().unwrap();
    let (mut admin, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let holder = admin.transaction().await.unwrap();
    holder
        .execute(&format!("SELECT {schema}.lock_topics(ARRAY['t09'])"), &[])
        .await
        .unwrap();

    let sweeper = store.clone();
    let sweep = tokio::spawn(async move { sweeper.sweep_all(cutoff).await });
    let first = Topic::new("t00").unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while store.count(&first).await.unwrap().connections > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first piece was not committed while a later topic was locked"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let last = Topic::new("t09").unwrap();
    assert_eq!(
        store.count(&last).await.unwrap().connections,
        6,
        "the locked topic waits"
    );
    assert!(!sweep.is_finished(), "the sweep waits for the locked topic");
    holder.rollback().await.unwrap();

    let departures = tokio::time::timeout(std::time::Duration::from_secs(30), sweep)
        .await
        .expect("the sweep ends once the lock is let go")
        .unwrap()
        .unwrap();
    assert_eq!(departures.len(), expired.len(), "no entry reported twice");
    let reported: BTreeSet<PresenceKey> = departures.into_iter().map(|d| d.entry.key).collect();
    assert_eq!(reported, expired, "every expired entry reported");
    assert_eq!(store.count(&last).await.unwrap().connections, 0);
}
