//! What holds when things go wrong or end: `close`, rows a store cannot
//! decode, the deepest meta the rules allow, and what an idle or dropped
//! subscription costs.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use presence_core::{
    Error, Event, MAX_META_DEPTH, Meta, PresenceKey, PresenceStore, PresenceStoreExt, Reason,
    Timestamp, Topic,
};
use serde_json::{Value, json};

use crate::support::{
    EVENT_TIMEOUT, Fixture, connection, departed, key, member, meta, next_event, topic,
};
use crate::{Backend, Setup};

/// Writes, behind a store's back, rows it cannot decode, the way damage,
/// hand edits or an older release could leave them.
#[async_trait::async_trait]
pub trait Damage: Send + Sync {
    /// Overwrites the stored meta of `key`, which is present, with text
    /// that is not a JSON object.
    async fn corrupt_meta(&self, key: &PresenceKey);

    /// Stores an entry in `topic` whose member and connection ids break the
    /// id rules (empty), last seen at `last_seen_at`, as the store would
    /// have stored a valid one (counts included).
    async fn plant_invalid_ids(&self, topic: &Topic, last_seen_at: Timestamp);
}

/// A JSON object nested `levels` deep (the object itself is level 1).
pub fn nested_meta(levels: usize) -> Value {
    let mut value = json!("deep");
    for _ in 1..levels {
        value = json!({ "x": value });
    }
    json!({ "x": value })
}

fn assert_closed<T: std::fmt::Debug>(call: &str, result: Result<T, Error>) {
    match result {
        Err(Error::Closed { .. }) => {}
        other => panic!("{call} after close: expected Error::Closed, got {other:?}"),
    }
}

/// `close` delivers what was committed, then ends every event stream; every
/// later call fails with `Error::Closed` and changes nothing; calls racing
/// the close either succeed or fail with `Closed`, never hang; closing
/// again is fine.
pub async fn close_ends_streams_and_refuses_calls(backend: &dyn Backend) {
    let f = Fixture::open(backend).await;
    let t = topic("room");
    let a = key("room", "alice", "tab");
    let mut events = f.store.subscribe(&t).await.unwrap();
    let joined = f.store.join(&a, Meta::new()).await.unwrap();

    // Writers racing the close.
    let racers: Vec<_> = (0..32)
        .map(|i| {
            let store = f.store.clone();
            tokio::spawn(async move {
                store
                    .join(&key("room", &format!("racer{i}"), "c"), Meta::new())
                    .await
            })
        })
        .collect();
    tokio::time::timeout(EVENT_TIMEOUT, f.store.close())
        .await
        .expect("close finishes in bounded time")
        .expect("close succeeds");
    for racer in racers {
        let result = tokio::time::timeout(EVENT_TIMEOUT, racer)
            .await
            .expect("a call racing close finishes")
            .unwrap();
        match result {
            Ok(_) | Err(Error::Closed { .. }) => {}
            Err(other) => panic!("a join racing close failed with {other:?}"),
        }
    }

    // The stream yields what was committed before, then ends.
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout(EVENT_TIMEOUT, events.next()).await {
            Ok(Some(event)) => seen.push(event),
            Ok(None) => break,
            Err(_) => panic!("the event stream did not end after close; got {seen:?}"),
        }
    }
    assert_eq!(
        seen.first(),
        Some(&Event::Join {
            entry: joined.entry,
            first_for_member: true
        }),
        "the join committed before close is delivered first"
    );

    let store = &f.store;
    let other = key("room", "bob", "tab");
    assert_closed("join", store.join(&other, Meta::new()).await);
    assert_closed(
        "join_limited",
        store.join_limited(&other, Meta::new(), 5).await,
    );
    assert_closed("update", store.update(&a, Meta::new()).await);
    assert_closed("touch", store.touch(&a).await);
    assert_closed(
        "touch_many",
        store.touch_many(std::slice::from_ref(&a)).await,
    );
    assert_closed("leave", store.leave(&a).await);
    assert_closed("leave_member", store.leave_member(&t, &a.member).await);
    assert_closed(
        "disconnect",
        store.disconnect(&a.member, &a.connection).await,
    );
    assert_closed("members", store.members(&t).await);
    assert_closed("member", store.member(&t, &a.member).await);
    assert_closed("count", store.count(&t).await);
    assert_closed("sweep", store.sweep(&t, f.now()).await);
    assert_closed("sweep_all", store.sweep_all(f.now()).await);
    assert_closed("topics_of", store.topics_of(&a.member).await);
    assert_closed("subscribe", store.subscribe(&t).await.map(|_| ()));
    store.close().await.expect("closing twice is fine");
    assert_eq!(store.max_meta_bytes(), Setup::default().max_meta_bytes);
}

/// The deepest meta the input rules allow is stored, read back, carried by
/// events and swept like any other, on every backend; one level deeper is
/// refused before the store is touched.
pub async fn deepest_meta_reads_back(backend: &dyn Backend) {
    let f = Fixture::open(backend).await;
    let t = topic("deep");
    let k = key("deep", "alice", "tab");
    let deepest = meta(nested_meta(MAX_META_DEPTH));
    let mut events = f.store.subscribe(&t).await.unwrap();
    let joined = f.store.join(&k, deepest.clone()).await.unwrap();
    assert_eq!(joined.entry.meta, deepest);
    match next_event(&mut events).await {
        Event::Join { entry, .. } => assert_eq!(entry.meta, deepest, "the event carries it"),
        other => panic!("expected the join, got {other:?}"),
    }
    let members = f.store.members(&t).await.unwrap();
    assert_eq!(members[0].connections[0].meta, deepest);
    f.store
        .join(&key("deep", "bob", "tab"), Meta::new())
        .await
        .unwrap();
    f.advance(1_000);
    let gone = f.store.sweep_all(f.now()).await.unwrap();
    assert_eq!(gone.len(), 2, "a deep meta does not stop the sweep");
    assert_eq!(gone[0].entry.meta, deepest);

    let err = Meta::from_value(nested_meta(MAX_META_DEPTH + 1)).unwrap_err();
    assert_eq!(err.invalid_field(), Some("meta"));
}

/// A row the store cannot decode never fails a read or the removal of
/// other rows. An entry whose meta cannot be read reads as `{}` everywhere
/// (members, departures, events), and can be updated, re-joined and
/// removed like any other; an entry whose ids cannot be read is invisible
/// to reads and removed silently by the removals that match it.
///
/// Needs [`Backend::open_damaged`]; a backend that cannot hold such rows
/// (memory) passes trivially.
pub async fn undecodable_rows_never_stop_removals(backend: &dyn Backend) {
    let setup = Setup::default();
    let Some((store, damage)) = backend.open_damaged(&setup).await else {
        return;
    };
    let f = Fixture {
        store,
        clock: setup.clock,
    };
    let t = topic("room");
    let mut events = f.store.subscribe(&t).await.unwrap();
    let a1 = key("room", "alice", "tab-1");
    let a2 = key("room", "alice", "tab-2");
    let b = key("room", "bob", "tab");
    let elsewhere = key("hall", "carol", "tab");
    for k in [&a1, &a2, &b, &elsewhere] {
        f.store.join(k, meta(json!({"v": 1}))).await.unwrap();
    }
    damage.corrupt_meta(&a1).await;
    damage.corrupt_meta(&elsewhere).await;
    damage.plant_invalid_ids(&t, f.now()).await;
    damage
        .plant_invalid_ids(&topic("hall"), f.now() - Duration::from_secs(1))
        .await;

    // Reads go on: the bad meta reads as {}, the bad ids are not shown.
    let members = f
        .store
        .members(&t)
        .await
        .expect("members of a damaged topic");
    let shown: Vec<(String, usize)> = members
        .iter()
        .map(|m| (m.member.to_string(), m.connections.len()))
        .collect();
    assert_eq!(shown, [("alice".into(), 2), ("bob".into(), 1)]);
    let alice = f.store.member(&t, &member("alice")).await.unwrap().unwrap();
    assert_eq!(alice.connections[0].connection, connection("tab-1"));
    assert_eq!(alice.connections[0].meta, Meta::new());
    assert_eq!(alice.connections[1].meta, meta(json!({"v": 1})));
    assert_eq!(
        f.store.topics_of(&member("alice")).await.unwrap(),
        std::slice::from_ref(&t)
    );

    // The damaged entry can be removed, re-joined and updated.
    f.advance(10);
    let left = f.store.leave(&a1).await.unwrap().expect("a1 was present");
    assert_eq!(left.entry.meta, Meta::new());
    assert!(!left.last_for_member, "alice keeps tab-2");
    f.store.join(&a1, meta(json!({"v": 2}))).await.unwrap();
    damage.corrupt_meta(&a1).await;
    let rejoined = f.store.join(&a1, meta(json!({"v": 3}))).await.unwrap();
    assert!(rejoined.was_present);
    let updated = f.store.update(&a1, meta(json!({"v": 4}))).await.unwrap();
    assert_eq!(updated.unwrap().meta, meta(json!({"v": 4})));
    damage.corrupt_meta(&a2).await;
    let dropped = f
        .store
        .disconnect(&member("alice"), &connection("tab-2"))
        .await
        .unwrap();
    assert_eq!(
        departed(&dropped),
        [("room".into(), "alice".into(), "tab-2".into(), false)]
    );
    assert_eq!(dropped[0].entry.meta, Meta::new());

    // A whole-store sweep removes everything old, damaged rows included,
    // and reports every decodable entry once.
    f.advance(60_000);
    let swept = f
        .store
        .sweep_expired(Duration::from_secs(30))
        .await
        .expect("sweep_all");
    assert_eq!(
        departed(&swept),
        [
            ("hall".into(), "carol".into(), "tab".into(), true),
            ("room".into(), "alice".into(), "tab-1".into(), true),
            ("room".into(), "bob".into(), "tab".into(), true),
        ]
    );
    assert!(swept.iter().all(|d| d.reason == Reason::Expired));
    assert_eq!(swept[0].entry.meta, Meta::new());
    for name in ["room", "hall"] {
        let t = topic(name);
        assert!(
            f.store.members(&t).await.unwrap().is_empty(),
            "{name} is empty"
        );
        let counts = f.store.count(&t).await.unwrap();
        assert_eq!(
            (counts.members, counts.connections),
            (0, 0),
            "{name} counts"
        );
    }

    // Subscribers saw every decodable change, and the last leave of each
    // member in the room.
    let mut last_leaves = 0;
    while last_leaves < 2 {
        match next_event(&mut events).await {
            Event::Leave { departure } if departure.last_for_member => last_leaves += 1,
            Event::Resync => panic!("damaged rows must not cost subscribers a resync"),
            _ => {}
        }
    }
}

/// Subscriptions are cheap while open and leave nothing behind when
/// dropped: `allocated` reads the bytes the process has allocated now (a
/// counting global allocator; see [`footprint_suite!`](crate::footprint_suite)).
pub async fn subscriptions_release_memory(backend: &dyn Backend, allocated: fn() -> usize) {
    const TOPICS: usize = 2_000;
    let f = Fixture::open(backend).await;
    let topics: Vec<Topic> = (0..TOPICS).map(|i| topic(&format!("room/{i}"))).collect();
    // Warm up whatever the store allocates once (statements, buffers).
    for t in topics.iter().take(50) {
        drop(f.store.subscribe(t).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;

    let before = allocated();
    let mut held = Vec::with_capacity(TOPICS);
    for t in &topics {
        held.push(f.store.subscribe(t).await.unwrap());
    }
    let open = allocated().saturating_sub(before);
    drop(held);
    for t in &topics {
        drop(f.store.subscribe(t).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let left = allocated().saturating_sub(before);

    let per_subscription = open / TOPICS;
    assert!(
        per_subscription < 4_096,
        "an idle subscription costs {per_subscription} bytes"
    );
    assert!(
        left < 2 << 20,
        "{TOPICS} topics subscribed and dropped (twice) left {left} bytes allocated"
    );
    // The store still works, and still delivers.
    let k = key("room/0", "alice", "tab");
    let mut events = f.store.subscribe(&k.topic).await.unwrap();
    f.store.join(&k, Meta::new()).await.unwrap();
    assert!(matches!(next_event(&mut events).await, Event::Join { .. }));
    let _: Arc<dyn PresenceStore> = f.store;
}
