//! Two OS processes on one Redis (and on the cluster), each joining,
//! leaving and sweeping the same members, while a subscriber in a third
//! (this test's own process) watches. The subscriber sees each member's
//! transitions alternate, and the two sweepers together report each expired
//! entry once.
//!
//! The test binary runs itself as the two writers: `child_process` is an
//! ignored test that does nothing unless `PRESENCE_CHILD_PREFIX` is set.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use conformance::processes::{Report, child_command, mixed_writer};
use conformance::support::stored_keys;
use futures::StreamExt;
use presence_core::{Event, Meta, PresenceKey, PresenceStore, Topic};
use presence_redis::{RedisConfig, RedisStore, testing};

const PREFIX: &str = "PRESENCE_CHILD_PREFIX";
const ID: &str = "PRESENCE_CHILD_ID";
const CLUSTER: &str = "PRESENCE_CHILD_CLUSTER";

fn config(cluster: bool, prefix: &str) -> RedisConfig {
    let mut config = if cluster {
        RedisConfig::cluster(testing::cluster_nodes().expect("the parent's cluster"))
    } else {
        RedisConfig::new(testing::server_url().expect("the parent's server"))
    };
    config.key_prefix = prefix.to_owned();
    config
}

#[test]
#[ignore = "a child process of the multi-process tests, not a test of its own"]
fn child_process() {
    let Ok(prefix) = std::env::var(PREFIX) else {
        return;
    };
    // The harness has printed "test child_process ... " without a newline.
    println!();
    let id: usize = std::env::var(ID).unwrap().parse().unwrap();
    let cluster = std::env::var(CLUSTER).is_ok();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = RedisStore::connect(config(cluster, &prefix)).await.unwrap();
        mixed_writer(&store, id, 400, 10).await;
        store.close().await.unwrap();
    });
}

async fn two_writers_one_watcher(cluster: bool) {
    let prefix = testing::unique_prefix("procs");
    // The watcher reads only once the writers are done: room for it all.
    let mut watcher = config(cluster, &prefix);
    watcher.event_buffer = 1 << 16;
    let store = RedisStore::connect(watcher).await.unwrap();
    let topic = Topic::new("shared").unwrap();
    let mut events = store.subscribe(&topic).await.unwrap();

    let children: Vec<_> = (0..2)
        .map(|id| {
            let mut command = child_command();
            command.env(PREFIX, &prefix).env(ID, id.to_string());
            if cluster {
                let nodes = testing::cluster_nodes().unwrap().join(",");
                command
                    .env(CLUSTER, "1")
                    .env("PRESENCE_REDIS_CLUSTER", nodes);
            } else {
                command.env("PRESENCE_REDIS_URL", testing::server_url().unwrap());
            }
            command.stdout(Stdio::piped()).spawn().unwrap()
        })
        .collect();
    let outputs = tokio::task::spawn_blocking(move || {
        children
            .into_iter()
            .map(|child| {
                let output = child.wait_with_output().unwrap();
                assert!(output.status.success(), "a writer process failed");
                String::from_utf8(output.stdout).unwrap()
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    let lines: Vec<String> = outputs
        .iter()
        .flat_map(|o| o.lines())
        .map(str::to_owned)
        .collect();
    let report = Report::read(&lines);

    // Everything the writers did reached the watcher: read up to a probe.
    let probe = PresenceKey::new("shared", "~probe", "~probe").unwrap();
    store.join(&probe, Meta::new()).await.unwrap();
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(20), events.next()).await {
            Ok(Some(Event::Join { entry, .. })) if entry.key == probe => break,
            Ok(Some(event)) => seen.push(event),
            other => panic!("the watcher stopped hearing events: {other:?}"),
        }
    }
    let mut present: BTreeMap<String, bool> = BTreeMap::new();
    let (mut joins, mut leaves) = (0, 0);
    for event in &seen {
        match event {
            Event::Join {
                entry,
                first_for_member,
            } => {
                joins += 1;
                if *first_for_member {
                    let was = present.insert(entry.key.member.to_string(), true);
                    assert_ne!(
                        was,
                        Some(true),
                        "{} joined twice without leaving",
                        entry.key.member
                    );
                }
            }
            Event::Leave { departure } => {
                leaves += 1;
                if departure.last_for_member {
                    let was = present.insert(departure.entry.key.member.to_string(), false);
                    assert_eq!(
                        was,
                        Some(true),
                        "{} left without having joined",
                        departure.entry.key.member
                    );
                }
            }
            Event::Resync => panic!("the watcher was told to resync on a healthy server"),
            _ => {}
        }
    }
    assert_eq!(joins, 800, "the watcher saw every join of both processes");
    assert_eq!(
        leaves,
        report.left.len() + report.swept.len(),
        "and every departure, once"
    );

    let mut stored = stored_keys(&store, &topic).await;
    stored.remove(&probe);
    report.check(800, &stored);
    for (member, is_present) in present {
        let in_store = stored.iter().any(|k| k.member.as_str() == member);
        assert_eq!(
            is_present, in_store,
            "the watcher's view of {member} matches the store"
        );
    }
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_one_watcher_on_one_server() {
    if testing::unavailable().is_some() {
        return;
    }
    two_writers_one_watcher(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_one_watcher_on_a_cluster() {
    if testing::cluster_unavailable().is_some() {
        return;
    }
    two_writers_one_watcher(true).await;
}
