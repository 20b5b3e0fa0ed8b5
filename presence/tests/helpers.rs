//! The runtime helpers on every backend: `Tracker`, `Heartbeats`, `Sweeper`
//! and `LiveMembers`. Time that matters comes from the store's manual clock.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conformance::support::{key, meta, topic};
use futures::StreamExt;
use presence::{
    Departure, Event, Heartbeat, Heartbeats, LiveMembers, LiveUpdate, Member, Meta, PresenceKey,
    PresenceStore, Reason, Sweeper, Tracker, serde_json::json,
};
use proptest::prelude::*;
use support::{Backend, Counted, Setup, eventually, eventually_within};

on_every_backend!(
    dropped_guard_leaves,
    swept_guard_rejoins,
    guard_updates_meta,
    heartbeats_flush_in_one_touch_many,
    heartbeats_report_absent_keys,
    heartbeats_split_large_flushes_and_keep_failed_batches,
    two_sweepers_never_report_twice,
    live_members_follow_events_and_diffs,
    live_members_converge_across_resyncs,
);

const HOUR: Duration = Duration::from_secs(3600);

async fn dropped_guard_leaves(backend: &dyn Backend) {
    let setup = Setup::default();
    let store = backend.open(&setup).await;
    let room = topic("room");
    let mut events = store.subscribe(&room).await.unwrap();
    let tracker = Tracker::new(store.clone(), HOUR).unwrap();
    let alice = tracker
        .track(key("room", "alice", "tab"), Meta::new())
        .await
        .unwrap();
    let bob = tracker
        .track(key("room", "bob", "tab"), Meta::new())
        .await
        .unwrap();
    assert!(alice.joined().first_for_member);
    assert_eq!(store.count(&room).await.unwrap().members, 2);

    drop(alice);
    eventually("the dropped guard has left", || async {
        store.count(&room).await.unwrap().members == 1
    })
    .await;
    assert!(
        store
            .member(&room, &bob.key().member)
            .await
            .unwrap()
            .is_some()
    );

    let mut leaves = Vec::new();
    while leaves.is_empty() {
        if let Event::Leave { departure } = conformance::support::next_event(&mut events).await {
            leaves.push(departure);
        }
    }
    assert_eq!(leaves[0].entry.key, key("room", "alice", "tab"));
    assert_eq!(leaves[0].reason, Reason::Left);
    assert!(leaves[0].last_for_member);

    // An explicit leave reports its departure, and the task leaves no more.
    let departure = bob.leave().await.unwrap().expect("bob was present");
    assert_eq!(departure.entry.key, key("room", "bob", "tab"));
    assert_eq!(store.count(&room).await.unwrap().members, 0);
}

async fn swept_guard_rejoins(backend: &dyn Backend) {
    let setup = Setup::default();
    let clock = setup.clock.clone();
    let store = backend.open(&setup).await;
    let room = topic("room");
    let ttl = Duration::from_secs(30);

    // By hand: heartbeats whose interval never comes during the test.
    let slow = Tracker::new(store.clone(), HOUR).unwrap();
    let tab = slow
        .track(key("room", "alice", "tab-1"), meta(json!({"v": 1})))
        .await
        .unwrap();
    assert_eq!(tab.heartbeat().await.unwrap(), Heartbeat::Touched);
    clock.advance(Duration::from_secs(60));
    let swept = store.sweep_all(clock_now(&store) - ttl).await.unwrap();
    assert_eq!(swept.len(), 1);
    match tab.heartbeat().await.unwrap() {
        Heartbeat::Rejoined(joined) => {
            assert!(!joined.was_present);
            assert_eq!(joined.entry.meta, meta(json!({"v": 1})));
        }
        other => panic!("expected a re-join, got {other:?}"),
    }
    assert_eq!(tab.rejoins(), 1);
    assert_eq!(store.count(&room).await.unwrap().connections, 1);

    // In the background: a guard on a short TTL notices by itself.
    let fast = Tracker::new(store.clone(), Duration::from_millis(150)).unwrap();
    let other = fast
        .track(key("room", "bob", "tab-1"), Meta::new())
        .await
        .unwrap();
    clock.advance(Duration::from_secs(60));
    let swept = store.sweep_all(clock_now(&store) - ttl).await.unwrap();
    assert_eq!(swept.len(), 2, "{swept:?}");
    eventually("the swept guard has joined again", || async {
        other.rejoins() >= 1 && store.count(&room).await.unwrap().members == 1
    })
    .await;
    assert_eq!(tab.rejoins(), 1, "only the background guard re-joins");
}

fn clock_now(store: &Arc<dyn PresenceStore>) -> presence::Timestamp {
    store.clock().now()
}

async fn guard_updates_meta(backend: &dyn Backend) {
    let setup = Setup::default();
    let clock = setup.clock.clone();
    let store = backend.open(&setup).await;
    let tracker = Tracker::new(store.clone(), HOUR).unwrap();
    let tab = tracker
        .track(key("doc", "alice", "tab"), meta(json!({"typing": false})))
        .await
        .unwrap();
    let entry = tab.update(meta(json!({"typing": true}))).await.unwrap();
    assert_eq!(entry.meta, meta(json!({"typing": true})));
    assert_eq!(tab.meta().await, meta(json!({"typing": true})));

    // After a sweep, an update joins again, and later re-joins keep it.
    clock.advance(Duration::from_secs(60));
    store.sweep_all(clock_now(&store)).await.unwrap();
    let entry = tab.update(meta(json!({"typing": "again"}))).await.unwrap();
    assert_eq!(entry.meta, meta(json!({"typing": "again"})));
    assert_eq!(tab.rejoins(), 1);
    clock.advance(Duration::from_secs(60));
    store.sweep_all(clock_now(&store)).await.unwrap();
    let Heartbeat::Rejoined(joined) = tab.heartbeat().await.unwrap() else {
        panic!("expected a re-join");
    };
    assert_eq!(joined.entry.meta, meta(json!({"typing": "again"})));
}

async fn heartbeats_flush_in_one_touch_many(backend: &dyn Backend) {
    let setup = Setup::default();
    let clock = setup.clock.clone();
    let inner = backend.open(&setup).await;
    let counted = Counted::new(inner.clone());
    let keys: Vec<PresenceKey> = (0..500)
        .map(|i| key(&format!("room-{}", i % 7), &format!("m{i}"), "socket"))
        .collect();
    for key in &keys {
        inner.join(key, Meta::new()).await.unwrap();
    }
    let gone = key("room-0", "gone", "socket");

    let heartbeats = Heartbeats::new(counted.clone(), HOUR).unwrap();
    for key in keys.iter().chain(keys.iter()) {
        heartbeats.touch(key.clone());
    }
    heartbeats.touch(gone.clone());
    assert_eq!(heartbeats.pending(), 501, "a key touched twice waits once");

    let now = clock.advance(Duration::from_secs(5));
    let absent = heartbeats.flush().await.unwrap();
    assert_eq!(absent, vec![gone]);
    assert_eq!(counted.touch_many_calls(), 1);
    assert_eq!(
        counted
            .touch_many_keys
            .load(std::sync::atomic::Ordering::SeqCst),
        501
    );
    assert_eq!(counted.touches.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(heartbeats.pending(), 0);
    for key in &keys {
        let member = inner
            .member(&key.topic, &key.member)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(member.last_seen_at, now, "{key} was not touched");
    }

    // Nothing pending: a flush sends nothing.
    assert!(heartbeats.flush().await.unwrap().is_empty());
    assert_eq!(counted.touch_many_calls(), 1);
}

async fn heartbeats_report_absent_keys(backend: &dyn Backend) {
    let store = backend.open(&Setup::default()).await;
    let present = key("room", "here", "socket");
    store.join(&present, Meta::new()).await.unwrap();
    let reported = Arc::new(Mutex::new(Vec::new()));
    let heartbeats = {
        let reported = reported.clone();
        Heartbeats::with_absent_handler(store.clone(), Duration::from_millis(20), move |keys| {
            reported.lock().unwrap().extend(keys)
        })
        .unwrap()
    };
    let closed = key("room", "closed", "socket");
    heartbeats.touch(present.clone());
    heartbeats.touch(key("room", "gone", "socket"));
    heartbeats.touch(closed.clone());
    heartbeats.forget(&closed);
    eventually("the background flush reported the absent key", || async {
        !reported.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(
        *reported.lock().unwrap(),
        vec![key("room", "gone", "socket")]
    );
    assert_eq!(heartbeats.pending(), 0);
}

async fn two_sweepers_never_report_twice(backend: &dyn Backend) {
    let setup = Setup::default();
    let clock = setup.clock.clone();
    let store = backend.open(&setup).await;
    let ttl = Duration::from_secs(30);
    let reported: Arc<Mutex<Vec<Departure>>> = Arc::default();
    let sweeper = |store: Arc<dyn PresenceStore>| {
        let reported = reported.clone();
        Sweeper::new(store, ttl)
            .unwrap()
            .on_departures(move |gone| reported.lock().unwrap().extend(gone))
    };
    let (first, second) = (sweeper(store.clone()), sweeper(store.clone()));
    let mut joined = Vec::new();
    for round in 0..12 {
        for i in 0..15 {
            // Members with one to three connections, over three topics.
            let key = key(
                &format!("topic-{}", i % 3),
                &format!("member-{}", i % 5),
                &format!("c-{round}-{i}"),
            );
            store.join(&key, Meta::new()).await.unwrap();
            joined.push(key);
        }
        clock.advance(Duration::from_secs(10));
        let (a, b) = tokio::join!(first.sweep_once(), second.sweep_once());
        a.unwrap();
        b.unwrap();
    }
    clock.advance(ttl * 2);
    let (a, b) = tokio::join!(first.sweep_once(), second.sweep_once());
    assert!(!a.unwrap().is_empty() || !b.unwrap().is_empty());

    let reported = std::mem::take(&mut *reported.lock().unwrap());
    let mut seen = HashSet::new();
    for departure in reported.iter() {
        assert_eq!(departure.reason, Reason::Expired);
        assert!(
            seen.insert(departure.entry.key.clone()),
            "{} reported twice",
            departure.entry.key
        );
    }
    let all: HashSet<PresenceKey> = joined.into_iter().collect();
    assert_eq!(seen, all, "every expired entry is reported once");
    for topic_name in ["topic-0", "topic-1", "topic-2"] {
        assert_eq!(
            store.count(&topic(topic_name)).await.unwrap().connections,
            0
        );
    }
}

async fn live_members_follow_events_and_diffs(backend: &dyn Backend) {
    let store = backend.open(&Setup::default()).await;
    let room = topic("room");
    store
        .join(&key("room", "early", "tab"), Meta::new())
        .await
        .unwrap();
    let live = LiveMembers::start(store.clone(), room.clone())
        .await
        .unwrap();
    let mut updates = live.updates();
    let Some(LiveUpdate::State { members, counts }) = updates.next().await else {
        panic!("the first update is the state");
    };
    let stored = store.members(&room).await.unwrap();
    assert!(
        Member::same_presence(&members, &stored),
        "{members:?} vs {stored:?}"
    );
    assert_eq!(counts.members, 1);

    store
        .join(&key("room", "alice", "tab-1"), Meta::new())
        .await
        .unwrap();
    let diff = next_diff(&mut updates).await;
    assert_eq!(names(&diff.joins), ["alice"]);
    assert_eq!((diff.counts.members, diff.counts.connections), (2, 2));

    store
        .join(&key("room", "alice", "tab-2"), Meta::new())
        .await
        .unwrap();
    let diff = next_diff(&mut updates).await;
    assert_eq!(names(&diff.joins), ["alice"]);
    assert_eq!(diff.joins[0].connections.len(), 2);
    assert!(diff.leaves.is_empty());

    store.leave(&key("room", "alice", "tab-1")).await.unwrap();
    let diff = next_diff(&mut updates).await;
    assert_eq!(
        names(&diff.joins),
        ["alice"],
        "a member who stays has changed"
    );
    assert_eq!(diff.joins[0].connections.len(), 1);

    store
        .leave_member(&room, &"alice".try_into().unwrap())
        .await
        .unwrap();
    let diff = next_diff(&mut updates).await;
    assert!(diff.joins.is_empty());
    assert_eq!(names(&diff.leaves), ["alice"]);
    assert_eq!((diff.counts.members, diff.counts.connections), (1, 1));

    // Other topics do not reach this list.
    store
        .join(&key("elsewhere", "bob", "tab"), Meta::new())
        .await
        .unwrap();
    store
        .update(&key("room", "early", "tab"), meta(json!({"away": true})))
        .await
        .unwrap();
    let diff = next_diff(&mut updates).await;
    assert_eq!(names(&diff.joins), ["early"]);
    assert_eq!(
        diff.joins[0].connections[0].meta,
        meta(json!({"away": true}))
    );
    assert_eq!(
        live.member(&"early".try_into().unwrap())
            .unwrap()
            .connections
            .len(),
        1
    );

    // Dropping the list ends its update streams.
    drop(live);
    let end = tokio::time::timeout(Duration::from_secs(10), updates.next()).await;
    assert!(matches!(end, Ok(None)), "the stream ended: {end:?}");
}

async fn next_diff(updates: &mut presence::LiveUpdates) -> presence::Diff {
    match tokio::time::timeout(Duration::from_secs(10), updates.next()).await {
        Ok(Some(LiveUpdate::Diff(diff))) => diff,
        other => panic!("expected a diff, got {other:?}"),
    }
}

fn names(members: &[Member]) -> Vec<&str> {
    members.iter().map(|m| m.member.as_str()).collect()
}

/// One random operation on a small world of ids.
#[derive(Clone, Debug)]
enum Op {
    Join(u8, u8, u8),
    Update(u8, u8, u8),
    Touch(u8, u8),
    Leave(u8, u8),
    LeaveMember(u8),
    Disconnect(u8, u8),
    Sweep(u16),
    Resync,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..6u8, 0..3u8, 0..3u8).prop_map(|(m, c, v)| Op::Join(m, c, v)),
        1 => (0..6u8, 0..3u8, 0..3u8).prop_map(|(m, c, v)| Op::Update(m, c, v)),
        1 => (0..6u8, 0..3u8).prop_map(|(m, c)| Op::Touch(m, c)),
        2 => (0..6u8, 0..3u8).prop_map(|(m, c)| Op::Leave(m, c)),
        1 => (0..6u8).prop_map(Op::LeaveMember),
        1 => (0..6u8, 0..3u8).prop_map(|(m, c)| Op::Disconnect(m, c)),
        1 => (0..20_000u16).prop_map(Op::Sweep),
        1 => Just(Op::Resync),
    ]
}

async fn live_members_converge_across_resyncs(backend: &dyn Backend) {
    let config = ProptestConfig {
        cases: 24,
        // A failing case waits out its bound; keep shrinking short.
        max_shrink_iters: 32,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let handle = tokio::runtime::Handle::current();
    let total_resyncs = Arc::new(std::sync::atomic::AtomicU64::new(0));
    // The runner is synchronous; each case runs on this test's runtime from
    // a blocking thread.
    let result = tokio::task::block_in_place(|| {
        runner.run(&proptest::collection::vec(op(), 1..80), |ops| {
            handle.block_on(converge_case(backend, ops, total_resyncs.clone()));
            Ok(())
        })
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
    assert!(total_resyncs.load(std::sync::atomic::Ordering::SeqCst) > 0);
}

async fn converge_case(
    backend: &dyn Backend,
    ops: Vec<Op>,
    total_resyncs: Arc<std::sync::atomic::AtomicU64>,
) {
    // A tiny event buffer, so a burst of writes overflows into `Resync`.
    let setup = Setup {
        event_buffer: 2,
        ..Setup::default()
    };
    let clock = setup.clock.clone();
    let store = backend.open(&setup).await;
    let room = topic("room");
    store
        .join(&key("room", "m0", "c0"), Meta::new())
        .await
        .unwrap();
    let live = LiveMembers::start(store.clone(), room.clone())
        .await
        .unwrap();

    // A client that holds the list only through `updates()`.
    let client: Arc<Mutex<BTreeMap<String, Member>>> = Arc::default();
    let mut updates = live.updates();
    let reader = {
        let client = client.clone();
        tokio::spawn(async move {
            while let Some(update) = updates.next().await {
                let mut client = client.lock().unwrap();
                match update {
                    LiveUpdate::State { members, .. } => {
                        *client = members
                            .into_iter()
                            .map(|m| (m.member.to_string(), m))
                            .collect();
                    }
                    LiveUpdate::Diff(diff) => {
                        for member in diff.leaves {
                            client.remove(member.member.as_str());
                        }
                        for member in diff.joins {
                            client.insert(member.member.to_string(), member);
                        }
                    }
                }
            }
        })
    };

    for op in ops {
        let k = |m: u8, c: u8| key("room", &format!("m{m}"), &format!("c{c}"));
        match op {
            Op::Join(m, c, v) => drop(store.join(&k(m, c), meta(json!({"v": v}))).await.unwrap()),
            Op::Update(m, c, v) => {
                drop(store.update(&k(m, c), meta(json!({"v": v}))).await.unwrap())
            }
            Op::Touch(m, c) => drop(store.touch(&k(m, c)).await.unwrap()),
            Op::Leave(m, c) => drop(store.leave(&k(m, c)).await.unwrap()),
            Op::LeaveMember(m) => drop(
                store
                    .leave_member(&room, &format!("m{m}").try_into().unwrap())
                    .await
                    .unwrap(),
            ),
            Op::Disconnect(m, c) => drop(
                store
                    .disconnect(
                        &format!("m{m}").try_into().unwrap(),
                        &format!("c{c}").try_into().unwrap(),
                    )
                    .await
                    .unwrap(),
            ),
            Op::Sweep(ms) => {
                clock.advance(Duration::from_millis(u64::from(ms)));
                let older_than = clock_now(&store) - Duration::from_secs(10);
                drop(store.sweep(&room, older_than).await.unwrap());
            }
            Op::Resync => live.resync(),
        }
    }

    let stored = store.members(&room).await.unwrap();
    let counts = store.count(&room).await.unwrap();

    // Events of memory and SQLite are delivered at commit, of Postgres
    // shortly after: a few seconds is ample. List and counts are checked
    // together: events delivered during a re-read still get applied after
    // it, so the list may pass through a state that matches for a moment.
    let bound = Duration::from_secs(3);
    eventually_within(
        bound,
        "the live list and counts equal the store's",
        || async { Member::same_presence(&live.members(), &stored) && live.counts() == counts },
    )
    .await;
    eventually_within(bound, "the client's list equals the live list", || async {
        let client: Vec<Member> = client.lock().unwrap().values().cloned().collect();
        Member::same_presence(
            &Member::group(client.iter().flat_map(|m| m.entries())),
            &stored,
        )
    })
    .await;
    total_resyncs.fetch_add(live.resyncs(), std::sync::atomic::Ordering::SeqCst);
    reader.abort();
}

async fn heartbeats_split_large_flushes_and_keep_failed_batches(backend: &dyn Backend) {
    let inner = backend.open(&Setup::default()).await;
    let counted = Counted::new(inner.clone());
    let heartbeats = Heartbeats::new(counted.clone(), HOUR).unwrap();
    // 25,000 keys (none joined: touching is what is measured here).
    for i in 0..25_000 {
        heartbeats.touch(key(&format!("room-{}", i % 50), &format!("m{i}"), "s"));
    }
    counted
        .fail_batches_under
        .store(10_000, std::sync::atomic::Ordering::SeqCst);
    let err = heartbeats.flush().await.unwrap_err();
    assert!(err.to_string().contains("injected"), "{err}");
    assert_eq!(counted.touch_many_calls(), 3, "10,000 + 10,000 + 5,000");
    assert_eq!(
        heartbeats.pending(),
        5_000,
        "the failed batch stays pending"
    );

    counted
        .fail_batches_under
        .store(0, std::sync::atomic::Ordering::SeqCst);
    let absent = heartbeats.flush().await.unwrap();
    assert_eq!(absent.len(), 5_000);
    assert_eq!(counted.touch_many_calls(), 4);
    assert_eq!(heartbeats.pending(), 0);
}
