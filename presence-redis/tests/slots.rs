//! On a cluster, a batch of joins is one script call per node, grouped by
//! the store's cached slot map. When a slot has moved since (the map is
//! stale), the node refuses the call before it changes anything, and the
//! store makes the joins again bucket by bucket: every join lands once,
//! with one event.

use std::collections::BTreeMap;
use std::time::Duration;

use conformance::logs::{captured, logged};
use futures::StreamExt;
use futures::future::join_all;
use presence_core::{Error, Event, Meta, PresenceKey, PresenceStore, Topic};
use presence_redis::testing::{self, Cluster};
use presence_redis::{RedisConfig, RedisStore, redis};

fn node(port: u16) -> redis::Connection {
    redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .unwrap()
        .get_connection()
        .unwrap()
}

fn id(port: u16) -> String {
    redis::cmd("CLUSTER")
        .arg("MYID")
        .query(&mut node(port))
        .unwrap()
}

/// The master (port) serving `slot`.
fn serving(ports: &[u16], slot: i64) -> u16 {
    let slots: Vec<redis::Value> = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query(&mut node(ports[0]))
        .unwrap();
    for range in slots {
        let redis::Value::Array(range) = range else {
            continue;
        };
        if let (redis::Value::Int(start), redis::Value::Int(end), redis::Value::Array(master)) =
            (&range[0], &range[1], &range[2])
            && (*start..=*end).contains(&slot)
            && let redis::Value::Int(port) = master[1]
        {
            return port as u16;
        }
    }
    panic!("no master serves slot {slot}");
}

/// Moves `slot` and its keys from its master to another one, the way
/// `redis-cli --cluster reshard` does.
fn move_slot(ports: &[u16], slot: i64) {
    let from = serving(ports, slot);
    let to = *ports.iter().find(|p| **p != from).unwrap();
    let (from_id, to_id) = (id(from), id(to));
    let _: () = redis::cmd("CLUSTER")
        .arg("SETSLOT")
        .arg(slot)
        .arg("IMPORTING")
        .arg(&from_id)
        .query(&mut node(to))
        .unwrap();
    let _: () = redis::cmd("CLUSTER")
        .arg("SETSLOT")
        .arg(slot)
        .arg("MIGRATING")
        .arg(&to_id)
        .query(&mut node(from))
        .unwrap();
    loop {
        let keys: Vec<Vec<u8>> = redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(slot)
            .arg(100)
            .query(&mut node(from))
            .unwrap();
        if keys.is_empty() {
            break;
        }
        let mut migrate = redis::cmd("MIGRATE");
        migrate
            .arg("127.0.0.1")
            .arg(to)
            .arg("")
            .arg(0)
            .arg(5000)
            .arg("KEYS")
            .arg(keys);
        let _: redis::Value = migrate.query(&mut node(from)).unwrap();
    }
    // The new owner first, then the old one, then the rest (as
    // `redis-cli --cluster reshard` does: the other way round, the two
    // would send clients back and forth for a moment).
    let mut order = vec![to, from];
    order.extend(ports.iter().copied().filter(|p| *p != to && *p != from));
    for port in order {
        let _: () = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("NODE")
            .arg(&to_id)
            .query(&mut node(port))
            .unwrap();
    }
}

// Ignored in the default run: after a slot moves, redis-rs 1.8.1's cluster
// client sometimes stops answering for good (every call through it times
// out, 60 s and more), with one call per bucket as well as per node (about
// one run in five on a quiet machine); a run that hits it fails here
// waiting for a join. Run it with `-- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "redis-rs's cluster client can stall for good after a slot moves; run with --ignored"]
async fn joins_grouped_by_a_stale_slot_map_are_made_bucket_by_bucket() {
    if !testing::can_start_servers() {
        return;
    }
    captured();
    let cluster = Cluster::start().unwrap();
    let mut config = RedisConfig::cluster(cluster.nodes());
    config.key_prefix = testing::unique_prefix("slots");
    let store = RedisStore::connect(config).await.unwrap();
    let topics: Vec<Topic> = (0..200)
        .map(|i| Topic::new(format!("room-{i}")).unwrap())
        .collect();
    let join_everywhere = |member: String| {
        let store = &store;
        join_all(topics.iter().map(move |topic| {
            let key = PresenceKey::new(topic.clone(), member.as_str(), "c").unwrap();
            async move { store.join(&key, Meta::new()).await }
        }))
    };
    // The first batch reads the slot map (and every topic gets an entry,
    // so the slot to move has keys).
    for joined in join_everywhere("early".to_owned()).await {
        joined.unwrap();
    }
    // A topic in the middle: its join rides a batch with other topics
    // (the first join queued may go alone).
    let moved = &topics[100];
    let channel = testing::channel(&store, moved);
    let slot: i64 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(&channel)
        .query(&mut node(cluster.ports()[0]))
        .unwrap();
    move_slot(&cluster.ports(), slot);
    let mut events = store.subscribe(moved).await.unwrap();

    // Well within the map's ten seconds: grouped by the old map, the moved
    // topic's join rides a call to a node that no longer serves it. (A
    // round whose batches happen to give it a call of its own leaves the
    // map stale for the next round.) redis-rs's cluster client sometimes
    // stalls for a while after a slot moves, and a join then fails with
    // `Error::Backend` (a timeout): the contract allows that, and such a
    // join, made again as `Tracker` would, lands once (`was_present` tells
    // whether the failed call had landed).
    let mut late = Vec::new();
    for round in 0..5 {
        let member = format!("late-{round}");
        let joins = join_everywhere(member.clone()).await;
        for (topic, joined) in topics.iter().zip(joins) {
            match joined {
                Ok(joined) => {
                    assert!(!joined.was_present, "{topic}: joined twice");
                    assert!(joined.first_for_member, "{topic}");
                }
                Err(Error::Backend { .. }) => {
                    let key = PresenceKey::new(topic.clone(), member.as_str(), "c").unwrap();
                    store
                        .join(&key, Meta::new())
                        .await
                        .unwrap_or_else(|e| panic!("joining {topic} again: {e}"));
                }
                Err(other) => panic!("joining {topic}: {other}"),
            }
        }
        late.push(member);
        if !logged(tracing::Level::DEBUG, "joining bucket by bucket").is_empty() {
            break;
        }
    }
    assert!(
        !logged(tracing::Level::DEBUG, "joining bucket by bucket").is_empty(),
        "no grouped call was refused in {} rounds: the stale map was not exercised",
        late.len()
    );
    let mut expected = vec!["early".to_owned()];
    expected.extend(late.iter().cloned());
    for topic in &topics {
        let members: Vec<String> = store
            .members(topic)
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.member.to_string())
            .collect();
        assert_eq!(members, expected, "{topic}");
        let counts = store.count(topic).await.unwrap();
        assert_eq!(counts.connections, expected.len() as u64, "{topic}");
    }
    // The moved topic's subscriber saw each join once.
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    while let Ok(Some(event)) =
        tokio::time::timeout(Duration::from_millis(500), events.next()).await
    {
        match event {
            Event::Join { entry, .. } => {
                *seen.entry(entry.key.member.to_string()).or_default() += 1
            }
            Event::Resync => panic!("a resync on {moved}"),
            _ => {}
        }
    }
    let once: BTreeMap<String, usize> = late.iter().map(|m| (m.clone(), 1)).collect();
    assert_eq!(seen, once);
    store.close().await.unwrap();
}
