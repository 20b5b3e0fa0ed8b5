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
