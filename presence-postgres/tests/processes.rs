//! Two OS processes on one schema, each joining, leaving and sweeping the
//! same members, while a subscriber in a third (this test's own process)
//! watches. The subscriber sees each member's transitions alternate, and the
//! two sweepers together report each expired entry once.
//!
//! The test binary runs itself as the two writers: `child_process` is an
//! ignored test that does nothing unless `PRESENCE_CHILD_SCHEMA` is set.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::Duration;

use futures::StreamExt;
use presence_core::{Event, Meta, PresenceKey, PresenceStore, PresenceStoreExt, Topic};
use presence_postgres::{PostgresConfig, PostgresStore, testing};

const SCHEMA: &str = "PRESENCE_CHILD_SCHEMA";
const ID: &str = "PRESENCE_CHILD_ID";

fn config(url: &str, schema: &str) -> PostgresConfig {
    let mut config = PostgresConfig::new(url);
    config.schema = schema.to_owned();
    config.pool_size = 4;
    config
}

fn print_key(tag: &str, key: &PresenceKey) {
    println!("{tag} {} {} {}", key.topic, key.member, key.connection);
}

fn parse_key(text: &str) -> PresenceKey {
    let mut parts = text.split(' ');
    let mut next = || parts.next().expect("three ids");
    PresenceKey::new(next(), next(), next()).unwrap()
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
        let mut mine = Vec::new();
        for i in 0..400 {
            let key =
                PresenceKey::new("shared", format!("m{}", i % 10), format!("p{id}-{i}")).unwrap();
            store.join(&key, Meta::new()).await.unwrap();
            print_key("join", &key);
            mine.push(key);
            if i % 3 == 2 {
                let old = mine.swap_remove(i * 7 % mine.len());
                if let Some(departure) = store.leave(&old).await.unwrap() {
                    print_key("leave", &departure.entry.key);
                }
            }
            if i % 10 == 9 {
                for departure in store
                    .sweep_expired(Duration::from_millis(30))
                    .await
                    .unwrap()
                {
                    print_key("swept", &departure.entry.key);
                }
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        }
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
            Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "child_process",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(SCHEMA, &schema)
                .env(ID, id.to_string())
                .env("PRESENCE_PG_URL", &url)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
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
    let lines: Vec<&str> = outputs.iter().flat_map(|o| o.lines()).collect();
    let tagged = |tag: &str| -> Vec<PresenceKey> {
        lines
            .iter()
            .filter_map(|l| l.strip_prefix(tag)?.strip_prefix(' '))
            .map(parse_key)
            .collect()
    };
    let joined: BTreeSet<PresenceKey> = tagged("join").into_iter().collect();
    let left: BTreeSet<PresenceKey> = tagged("leave").into_iter().collect();
    let swept_list = tagged("swept");
    let swept: BTreeSet<PresenceKey> = swept_list.iter().cloned().collect();
    assert_eq!(joined.len(), 800);
    assert!(
        !swept.is_empty(),
        "nothing expired: the test proves nothing"
    );
    assert_eq!(
        swept.len(),
        swept_list.len(),
        "an expired entry was reported twice"
    );
    assert!(left.is_disjoint(&swept), "an entry both left and expired");

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
        left.len() + swept.len(),
        "and every departure, once"
    );

    let stored: BTreeSet<PresenceKey> = store
        .members(&topic)
        .await
        .unwrap()
        .iter()
        .flat_map(|m| m.entries())
        .map(|e| e.key)
        .filter(|k| *k != probe)
        .collect();
    let expected: BTreeSet<PresenceKey> = joined
        .iter()
        .filter(|k| !left.contains(*k) && !swept.contains(*k))
        .cloned()
        .collect();
    assert_eq!(
        stored, expected,
        "the schema holds exactly what was joined and not removed"
    );
    for (member, is_present) in present {
        let in_store = stored.iter().any(|k| k.member.as_str() == member);
        assert_eq!(
            is_present, in_store,
            "the watcher's view of {member} matches the store"
        );
    }
}
