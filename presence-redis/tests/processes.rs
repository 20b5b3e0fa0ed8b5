//! Two OS processes on one Redis (and on the cluster), each joining,
//! leaving and sweeping the same members, while a subscriber in a third
//! (this test's own process) watches. The subscriber sees each member's
//! transitions alternate, and the two sweepers together report each expired
//! entry once.
//!
//! The test binary runs itself as the two writers: `child_process` is an
//! ignored test that does nothing unless `PRESENCE_CHILD_PREFIX` is set.

use std::process::Stdio;

use conformance::processes::{check_watcher, child_command, mixed_writer, reports_of};
use presence_core::{PresenceStore, Topic};
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
    let report = reports_of(children).await;

    check_watcher(&store, &mut events, &topic, &report, 800).await;
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
