//! Lost connections: under a steady load of joins and touches, every backend
//! connection of the store is terminated from outside. Calls fail with
//! `Error::Backend` or succeed, never hang; within 5 s everything succeeds
//! again; every acknowledged join is in the table; the subscriber is told
//! to resync. (Its own test binary, so its own server: terminating every
//! backend cannot disturb other tests.)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use conformance::support::stored_keys;
use futures::StreamExt;
use presence_core::{Error, Event, Meta, PresenceKey, PresenceStore, Topic};
use presence_postgres::{PostgresStore, testing};

/// Longer than any call may take: a call still running then has hung.
const HANG: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn terminated_connections_fail_calls_cleanly_and_recover() {
    let Some(url) = testing::server_url() else {
        return;
    };
    let config = testing::store_config("faults");
    let store = Arc::new(PostgresStore::connect(config).await.unwrap());
    let topic = Topic::new("load").unwrap();
    let mut events = store.subscribe(&topic).await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..8)
        .map(|worker| {
            let (store, stop) = (store.clone(), stop.clone());
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                let mut failures = 0;
                let mut last_failure: Option<Instant> = None;
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let key = PresenceKey::new("load", format!("w{worker}-{i}"), "c").unwrap();
                    let joined = tokio::time::timeout(HANG, store.join(&key, Meta::new()))
                        .await
                        .unwrap_or_else(|_| panic!("a join hung for {HANG:?}"));
                    let touched = tokio::time::timeout(HANG, store.touch(&key))
                        .await
                        .unwrap_or_else(|_| panic!("a touch hung for {HANG:?}"));
                    if joined.is_ok() {
                        acknowledged.push(key.clone());
                    }
                    for result in [joined.map(|_| ()), touched.map(|_| ())] {
                        match result {
                            Ok(()) => {}
                            Err(Error::Backend {
                                backend: "postgres",
                                ..
                            }) => {
                                failures += 1;
                                last_failure = Some(Instant::now());
                            }
                            Err(other) => panic!("a lost connection gave {other:?}"),
                        }
                    }
                }
                (acknowledged, failures, last_failure)
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_secs(1)).await;
    let (admin, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let killed = Instant::now();
    let terminated: i64 = admin
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        terminated >= 2,
        "terminated only {terminated} connections (pool and listener expected)"
    );
    tokio::time::sleep(Duration::from_secs(6)).await;
    stop.store(true, Ordering::Relaxed);

    let mut acknowledged = Vec::new();
    let mut failures = 0;
    for worker in workers {
        let (acked, failed, last_failure) = worker.await.unwrap();
        acknowledged.extend(acked);
        failures += failed;
        if let Some(at) = last_failure {
            assert!(
                at.duration_since(killed) < Duration::from_secs(5),
                "calls still failed {:?} after the connections were terminated",
                at.duration_since(killed)
            );
        }
    }
    eprintln!(
        "{terminated} connections terminated; {failures} calls failed; {} joins acknowledged",
        acknowledged.len()
    );

    // Everything works again, and nothing acknowledged was lost.
    let stored = stored_keys(&*store, &topic).await;
    let lost: Vec<_> = acknowledged
        .iter()
        .filter(|k| !stored.contains(k))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged joins lost, e.g. {:?}",
        lost.len(),
        lost.first()
    );
    assert!(
        acknowledged.len() > 100,
        "too little load to prove anything"
    );

    // The listener came back by itself and told the subscriber to resync.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut resynced = false;
    while !resynced && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(1), events.next()).await {
            Ok(Some(Event::Resync)) => resynced = true,
            Ok(Some(_)) | Err(_) => {}
            Ok(None) => panic!("the event stream ended"),
        }
    }
    assert!(
        resynced,
        "the subscriber was not told to resync after the listener lost its connection"
    );
    assert!(store.is_listening());
    let after = PresenceKey::new("load", "after", "c").unwrap();
    let joined = store.join(&after, Meta::new()).await.unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.next()).await {
            Ok(Some(Event::Join { entry, .. })) if entry == joined.entry => break,
            Ok(Some(_)) => continue,
            other => panic!("events did not resume after reconnecting: {other:?}"),
        }
    }
}
