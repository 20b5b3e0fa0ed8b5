//! What the store records through presence-core's `metrics` module (run
//! with `--features metrics`): joins by outcome, departures by reason,
//! touched keys, batch sizes per kind, commit and sweep durations, pool
//! waits and backend errors, all labelled `backend="postgres"` only.
#![cfg(all(feature = "testing", feature = "metrics"))]

use std::collections::HashMap;
use std::sync::OnceLock;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use presence_core::{Meta, PresenceKey, PresenceStore, Topic};
use presence_postgres::{PostgresStore, testing};

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

/// Counters summed, and histograms' sample counts, by name and labels.
fn readings() -> HashMap<String, u64> {
    let mut readings = HashMap::new();
    for (key, _, _, value) in snapshotter().snapshot().into_vec() {
        let key = key.key();
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        assert!(
            labels
                .iter()
                .all(|l| !l.contains("room") && !l.contains("alice")),
            "no topic or member in labels: {labels:?}"
        );
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        let n = match value {
            DebugValue::Counter(n) => n,
            DebugValue::Histogram(samples) => samples.len() as u64,
            DebugValue::Gauge(_) => 1,
        };
        *readings.entry(name).or_insert(0) += n;
    }
    readings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_records_what_it_does() {
    snapshotter();
    let Some(url) = testing::server_url() else {
        return;
    };
    let config = testing::store_config("metrics");
    let schema = config.schema.clone();
    let store = PostgresStore::connect(config).await.unwrap();
    let room = Topic::new("room").unwrap();
    let a = PresenceKey::new("room", "alice", "tab").unwrap();
    let b = PresenceKey::new("room", "bob", "tab").unwrap();
    store.join(&a, Meta::new()).await.unwrap();
    store.join(&a, Meta::new()).await.unwrap();
    store.join(&b, Meta::new()).await.unwrap();
    store
        .join_limited(
            &PresenceKey::new("room", "carol", "tab").unwrap(),
            Meta::new(),
            2,
        )
        .await
        .unwrap_err();
    store.touch(&a).await.unwrap();
    store
        .touch_many(&[a.clone(), PresenceKey::new("room", "x", "y").unwrap()])
        .await
        .unwrap();
    store.leave(&b).await.unwrap();
    store
        .sweep_all(store.clock().now() + std::time::Duration::from_secs(1))
        .await
        .unwrap();

    let (admin, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    admin
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
    store.members(&room).await.unwrap_err();

    let r = readings();
    let get = |name: &str| r.get(name).copied().unwrap_or(0);
    let p = "backend=postgres";
    assert_eq!(
        get(&format!("presence_joins_total{{{p},outcome=new}}")),
        2,
        "{r:?}"
    );
    assert_eq!(
        get(&format!("presence_joins_total{{{p},outcome=rejoin}}")),
        1,
        "{r:?}"
    );
    assert_eq!(
        get(&format!("presence_joins_total{{{p},outcome=full}}")),
        1,
        "{r:?}"
    );
    assert_eq!(
        get(&format!("presence_departures_total{{{p},reason=left}}")),
        1,
        "{r:?}"
    );
    assert_eq!(
        get(&format!("presence_departures_total{{{p},reason=expired}}")),
        1,
        "{r:?}"
    );
    assert_eq!(
        get(&format!("presence_touched_keys_total{{{p}}}")),
        3,
        "{r:?}"
    );
    assert_eq!(
        get(&format!("presence_absent_keys_total{{{p}}}")),
        1,
        "{r:?}"
    );
    assert!(
        get(&format!("presence_batch_size{{{p},kind=join}}")) >= 3,
        "{r:?}"
    );
    assert!(
        get(&format!("presence_batch_size{{{p},kind=touch}}")) >= 1,
        "{r:?}"
    );
    assert!(
        get(&format!("presence_batch_size{{{p},kind=leave}}")) >= 1,
        "{r:?}"
    );
    assert!(
        get(&format!("presence_commit_seconds{{{p}}}")) >= 5,
        "{r:?}"
    );
    assert_eq!(get(&format!("presence_sweep_seconds{{{p}}}")), 1, "{r:?}");
    assert!(
        get(&format!("presence_pool_wait_seconds{{{p}}}")) >= 5,
        "{r:?}"
    );
    assert_eq!(
        get(&format!("presence_backend_errors_total{{{p}}}")),
        1,
        "{r:?}"
    );
}
