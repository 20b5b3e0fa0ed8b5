//! The stores' metrics (feature `metrics`), on every backend, read back
//! through a recording backend of the `metrics` facade.

mod support;

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use conformance::support::{connection, key, member, topic};
use futures::StreamExt;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use presence::metrics as names;
use presence::{Meta, PresenceStore, PresenceStoreExt};
use support::{Backend, Setup};

on_every_backend!(stores_record_what_they_do);

/// The recorder, installed once for the whole test binary; each backend's
/// test reads only the series labelled with its own backend.
fn snapshotter() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("the only recorder of this binary");
        snapshotter
    })
}

/// `(metric, sorted labels)` -> counter total, or number of histogram samples.
type Readings = HashMap<(String, Vec<(String, String)>), (u64, Vec<f64>)>;

fn read() -> Readings {
    let mut readings = Readings::new();
    for (key, _, _, value) in snapshotter().snapshot().into_vec() {
        let key = key.key();
        let mut labels: Vec<(String, String)> = key
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        labels.sort();
        let reading = readings.entry((key.name().to_owned(), labels)).or_default();
        match value {
            DebugValue::Counter(n) => reading.0 += n,
            DebugValue::Histogram(samples) => {
                reading.1.extend(samples.iter().map(|s| s.into_inner()))
            }
            DebugValue::Gauge(_) => {}
        }
    }
    readings
}

fn counter(readings: &Readings, name: &str, labels: &[(&str, &str)]) -> u64 {
    let mut labels: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    labels.sort();
    readings
        .get(&(name.to_owned(), labels))
        .map_or(0, |(n, _)| *n)
}

/// Samples of a histogram with these labels (and any others).
fn samples(readings: &Readings, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    readings
        .iter()
        .filter(|((n, l), _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .flat_map(|(_, (_, samples))| samples.clone())
        .collect()
}

async fn stores_record_what_they_do(backend: &dyn Backend) {
    let _ = snapshotter();
    let setup = Setup {
        event_buffer: 2,
        ..Setup::default()
    };
    let store = backend.open(&setup).await;
    let name = backend_name(&*store);
    let b = ("backend", name);
    // A subscriber that falls behind: it is told to resync.
    let mut slow = store.subscribe(&topic("room")).await.unwrap();
    for i in 0..5 {
        store
            .join(&key("room", &format!("m{i}"), "tab"), Meta::new())
            .await
            .unwrap();
    }
    store
        .join(&key("room", "m0", "tab"), Meta::new())
        .await
        .unwrap();
    assert!(
        store
            .join_limited(&key("room", "late", "tab"), Meta::new(), 5)
            .await
            .is_err()
    );
    store.leave(&key("room", "m1", "tab")).await.unwrap();
    store
        .disconnect(&member("m2"), &connection("tab"))
        .await
        .unwrap();
    let absent = store
        .touch_many(&[key("room", "m3", "tab"), key("room", "nobody", "tab")])
        .await
        .unwrap();
    assert_eq!(absent.len(), 1);
    setup.clock.advance(Duration::from_secs(120));
    let expired = store.sweep_expired(Duration::from_secs(60)).await.unwrap();
    assert_eq!(expired.len(), 3);
    // Reading makes the stream notice that it lagged.
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_secs(5), slow.next()).await {
        if event == presence::Event::Resync {
            break;
        }
    }
    store.close().await.unwrap();

    let now = read();
    assert_eq!(counter(&now, names::JOINS, &[b, ("outcome", "new")]), 5);
    assert_eq!(counter(&now, names::JOINS, &[b, ("outcome", "rejoin")]), 1);
    assert_eq!(counter(&now, names::JOINS, &[b, ("outcome", "full")]), 1);
    for (reason, n) in [("left", 1), ("disconnected", 1), ("expired", 3)] {
        assert_eq!(
            counter(&now, names::DEPARTURES, &[b, ("reason", reason)]),
            n,
            "{reason}"
        );
    }
    assert_eq!(counter(&now, names::TOUCHED_KEYS, &[b]), 2);
    assert_eq!(counter(&now, names::ABSENT_KEYS, &[b]), 1);
    assert!(counter(&now, names::RESYNCS, &[b]) >= 1, "resyncs");
    assert!(
        !samples(&now, names::SWEEP_SECONDS, &[b]).is_empty(),
        "sweeps"
    );
    if name != "memory" {
        let batches = samples(&now, names::BATCH_SIZE, &[b]);
        assert!(
            !batches.is_empty() && batches.iter().all(|&n| n >= 1.0),
            "{batches:?}"
        );
        assert!(
            !samples(&now, names::COMMIT_SECONDS, &[b]).is_empty(),
            "commits"
        );
    }
    if name == "postgres" {
        assert!(
            !samples(&now, names::POOL_WAIT_SECONDS, &[b]).is_empty(),
            "pool waits"
        );
    }
    // Labels never carry a topic, member or connection.
    for ((_, labels), _) in now {
        for (key, value) in labels {
            assert!(
                ["backend", "outcome", "reason", "kind"].contains(&key.as_str()),
                "label {key}={value}"
            );
        }
    }
}

/// The backend's name as its errors give it (`Error::Closed` after close).
fn backend_name(store: &dyn PresenceStore) -> &'static str {
    let debug = format!("{store:?}");
    if debug.starts_with("MemoryStore") {
        "memory"
    } else if debug.starts_with("SqliteStore") {
        "sqlite"
    } else if debug.starts_with("RedisStore") {
        "redis"
    } else {
        "postgres"
    }
}
