//! Two OS processes on one schema, each joining, leaving and sweeping the
//! same members, while a subscriber in a third (this test's own process)
//! watches. The subscriber sees each member's transitions alternate, and the
//! two sweepers together report each expired entry once.
//!
//! The test binary runs itself as the two writers: `child_process` is an
//! ignored test that does nothing unless `PRESENCE_CHILD_SCHEMA` is set.

use conformance::processes::{check_watcher, child_command, mixed_writer, reports_of};
use std::process::Stdio;

use presence_core::{PresenceStore, Topic};
use presence_postgres::{PostgresConfig, PostgresStore, testing};

const SCHEMA: &str = "PRESENCE_CHILD_SCHEMA";
const ID: &str = "PRESENCE_CHILD_ID";

fn config(url: &str, schema: &str) -> PostgresConfig {
    let mut config = PostgresConfig::new(url);
    config.schema = schema.to_owned();
    config.pool_size = 4;
    config
}

#[test]
#[ignore = "a child process of the multi-process test, not a test of its own"]
fn child_process() {
    let Ok(schema) = std::env::var(SCHEMA) else {
        return;
    };
    // The harness has printed "test child_process ... " without a newline.
    println!();
    let id: usize = std::env::var(ID).unwrap().parse().unwrap();
    let url = testing::server_url().expect("the parent's server");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = PostgresStore::connect(config(&url, &schema)).await.unwrap();
        mixed_writer(&store, id, 400, 10).await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_one_watcher() {
    let Some(url) = testing::server_url() else {
        return;
    };
    let schema = testing::unique_schema("procs");
    // The watcher reads only once the writers are done: room for it all.
    let mut watcher = config(&url, &schema);
    watcher.event_buffer = 1 << 16;
    let store = PostgresStore::connect(watcher).await.unwrap();
    let topic = Topic::new("shared").unwrap();
    let mut events = store.subscribe(&topic).await.unwrap();

    let children: Vec<_> = (0..2)
        .map(|id| {
            child_command()
                .env(SCHEMA, &schema)
                .env(ID, id.to_string())
                .env("PRESENCE_PG_URL", &url)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let report = reports_of(children).await;

    check_watcher(&store, &mut events, &topic, &report, 800).await;
}
