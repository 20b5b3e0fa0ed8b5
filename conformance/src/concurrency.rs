//! Races on a multi-threaded runtime: the contract must hold when many tasks
//! call at once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use presence_core::{
    Departure, Entry, Error, Event, MemberId, Meta, PresenceKey, PresenceStore, Timestamp, Topic,
};
use serde_json::json;
use tokio::sync::Barrier;

use crate::support::{
    Fixture, Rng, assert_no_pending_event, key, member_ids, meta, next_events, topic,
};
use crate::{Backend, Setup};

/// Spawns `n` tasks that start together and returns their results in order.
async fn race<T, F, Fut>(n: usize, task: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
{
    let barrier = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let barrier = barrier.clone();
            let work = task(i);
            tokio::spawn(async move {
                barrier.wait().await;
                work.await
            })
        })
        .collect();
    join_all(handles)
        .await
        .into_iter()
        .map(|joined| joined.expect("a racing task panicked"))
        .collect()
}

/// Concurrent joins of one key leave one entry, and exactly one caller sees
/// `was_present = false` (and, for a new member, `first_for_member`).
pub async fn concurrent_joins_of_one_key(backend: &dyn Backend) {
    let f = Fixture::open(backend).await;
    let t = topic("race");
    for round in 0..20 {
        let k = key("race", &format!("m{round}"), "c");
        let results = race(16, |i| {
            let (store, k) = (f.store.clone(), k.clone());
            async move { store.join(&k, meta(json!({ "task": i }))).await.unwrap() }
        })
        .await;
        let fresh = results.iter().filter(|j| !j.was_present).count();
        let first = results.iter().filter(|j| j.first_for_member).count();
        assert_eq!(
            fresh, 1,
            "round {round}: exactly one join created the entry"
        );
        assert_eq!(
            first, 1,
            "round {round}: exactly one join was the member's first"
        );
        let joined_at: BTreeSet<Timestamp> = results.iter().map(|j| j.entry.joined_at).collect();
        assert_eq!(
            joined_at.len(),
            1,
            "round {round}: one entry, one joined_at"
        );
    }
    let counts = f.store.count(&t).await.unwrap();
    assert_eq!((counts.members, counts.connections), (20, 20));
}

/// 50 tasks racing `join_limited` for 10 seats: exactly 10 get in, 40 get
/// `TopicFull`, the store holds exactly the 10; present members' further
/// connections get in even while the topic is full.
pub async fn join_limited_is_exact_under_contention(backend: &dyn Backend) {
    let f = Fixture::open(backend).await;
    for round in 0..5 {
        let name = format!("seats-{round}");
        let t = topic(&name);
        let results = race(50, |i| {
            let (store, k) = (f.store.clone(), key(&name, &format!("m{i}"), "c1"));
            async move { store.join_limited(&k, Meta::new(), 10).await }
        })
        .await;
        let admitted: BTreeSet<MemberId> = results
            .iter()
            .filter_map(|r| r.as_ref().ok().map(|j| j.entry.key.member.clone()))
            .collect();
        let full = results
            .iter()
            .filter(|r| {
                matches!(
                    r,
                    Err(Error::TopicFull {
                        max_members: 10,
                        ..
                    })
                )
            })
            .count();
        assert_eq!(
            admitted.len(),
            10,
            "round {round}: exactly 10 of 50 got a seat"
        );
        assert_eq!(
            full, 40,
            "round {round}: the other 40 were refused with TopicFull"
        );
        let present = member_ids(&*f.store, &t).await;
        assert_eq!(
            present, admitted,
            "round {round}: the store holds exactly the admitted"
        );

        // Second wave: the admitted open second tabs while 20 newcomers push.
        let admitted: Vec<MemberId> = admitted.into_iter().collect();
        let results = race(30, |i| {
            let store = f.store.clone();
            let k = match admitted.get(i) {
                Some(m) => key(&name, m, "c2"),
                None => key(&name, &format!("new{i}"), "c1"),
            };
            async move { store.join_limited(&k, Meta::new(), 10).await.is_ok() }
        })
        .await;
        assert!(
            results[..10].iter().all(|ok| *ok),
            "round {round}: present members always get in"
        );
        assert!(
            results[10..].iter().all(|ok| !ok),
            "round {round}: newcomers stay out"
        );
        let counts = f.store.count(&t).await.unwrap();
        assert_eq!((counts.members, counts.connections), (10, 20));
    }
}

/// Several sweepers at once (`sweep_all` and per-topic `sweep`) report every
/// expired entry exactly once and every member departure exactly once.
pub async fn concurrent_sweepers_report_each_entry_once(backend: &dyn Backend) {
    let f = Fixture::open(backend).await;
    let topics: Vec<String> = (0..10).map(|t| format!("t{t}")).collect();
    for round in 0..3 {
        let mut rng = Rng::new(round);
        let mut all = Vec::new();
        for t in &topics {
            for m in 0..20 {
                for c in 0..3 {
                    let k = key(t, &format!("m{m}"), &format!("c{c}"));
                    f.store.join(&k, Meta::new()).await.unwrap();
                    all.push(k);
                }
            }
        }
        // Spread last_seen_at over 0..1000 ms past now.
        let base = f.now();
        for k in &all {
            f.clock.set(base + Duration::from_millis(rng.below(1_000)));
            f.store.touch(k).await.unwrap();
        }
        f.clock.set(base + Duration::from_millis(2_000));
        let cutoff = base + Duration::from_millis(500);
        let mut expected: BTreeMap<PresenceKey, Timestamp> = BTreeMap::new();
        for t in &topics {
            for m in f.store.members(&topic(t)).await.unwrap() {
                for e in m.entries() {
                    if e.last_seen_at < cutoff {
                        expected.insert(e.key, e.last_seen_at);
                    }
                }
            }
        }

        // Round 0: four sweep_all callers; round 1: two of each kind;
        // round 2: one sweep_all against three per-topic sweepers. Whatever
        // the scheduling, some sweep_all call reports entries in round 0.
        let sweep_all_callers = [4, 2, 1][round as usize];
        let reported: Vec<Departure> = race(4, |i| {
            let store = f.store.clone();
            let mut order: Vec<Topic> = topics.iter().map(|t| topic(t)).collect();
            if i % 2 == 1 {
                order.reverse();
            }
            async move {
                if i < sweep_all_callers {
                    store.sweep_all(cutoff).await.unwrap()
                } else {
                    let mut out = Vec::new();
                    for t in &order {
                        out.extend(store.sweep(t, cutoff).await.unwrap());
                    }
                    out
                }
            }
        })
        .await
        .into_iter()
        .flatten()
        .collect();

        let mut seen: BTreeMap<PresenceKey, usize> = BTreeMap::new();
        for d in &reported {
            *seen.entry(d.entry.key.clone()).or_default() += 1;
        }
        let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            twice.is_empty(),
            "round {round}: reported more than once: {twice:?}"
        );
        let reported_keys: BTreeSet<&PresenceKey> = seen.keys().collect();
        let expected_keys: BTreeSet<&PresenceKey> = expected.keys().collect();
        assert_eq!(
            reported_keys, expected_keys,
            "round {round}: exactly the expired entries"
        );

        // Member departures: once for each member left with nothing.
        let mut last_flags: BTreeMap<(Topic, MemberId), usize> = BTreeMap::new();
        for d in reported.iter().filter(|d| d.last_for_member) {
            *last_flags
                .entry((d.entry.key.topic.clone(), d.entry.key.member.clone()))
                .or_default() += 1;
        }
        for t in &topics {
            let t = topic(t);
            let remaining = member_ids(&*f.store, &t).await;
            for m in 0..20 {
                let m = crate::support::member(&format!("m{m}"));
                let had_expired = expected.keys().any(|k| k.topic == t && k.member == m);
                let flags = last_flags
                    .get(&(t.clone(), m.clone()))
                    .copied()
                    .unwrap_or(0);
                let want = usize::from(had_expired && !remaining.contains(&m));
                assert_eq!(flags, want, "round {round}: last_for_member of {m} in {t}");
            }
        }
        // Clean up for the next round.
        f.store
            .sweep_all(f.now() + Duration::from_millis(1))
            .await
            .unwrap();
    }
}

/// What one churn task saw, for checking against the subscriber.
#[derive(Default)]
struct Effects {
    created: Vec<Entry>,
    rejoined: usize,
    updated: usize,
    departures: Vec<Departure>,
}

/// Many tasks joining, updating, leaving, disconnecting and sweeping the
/// same members at once, with a moving clock. Afterwards: the subscriber saw
/// exactly the changes the callers were told of; per member, its first joins
/// and last leaves alternate, starting with a join; replaying the events
/// gives the store's final state; nothing was created or removed twice.
pub async fn churn_keeps_member_transitions_alternating(backend: &dyn Backend) {
    let setup = Setup {
        event_buffer: 1 << 16,
        ..Setup::default()
    };
    let f = Fixture::with(backend, setup).await;
    let t = topic("churn");
    let mut events = f.store.subscribe(&t).await.unwrap();
    let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));

    let effects: Vec<Effects> = race(6, |task| {
        let store = f.store.clone();
        let clock = f.clock.clone();
        let counter = counter.clone();
        async move { churn_task(&*store, &clock, &counter, task).await }
    })
    .await;

    let created: usize = effects.iter().map(|e| e.created.len()).sum();
    let rejoined: usize = effects.iter().map(|e| e.rejoined).sum();
    let updated: usize = effects.iter().map(|e| e.updated).sum();
    let departures: Vec<&Departure> = effects
        .iter()
        .flat_map(|e| &e.departures)
        .filter(|d| d.entry.key.topic == t)
        .collect();
    let final_members = f.store.members(&t).await.unwrap();
    let final_connections: usize = final_members.iter().map(|m| m.connections.len()).sum();
    let created_here = effects
        .iter()
        .flat_map(|e| &e.created)
        .filter(|e| e.key.topic == t)
        .count();
    assert_eq!(
        created_here - departures.len(),
        final_connections,
        "every entry created was removed at most once"
    );

    let expected = created_here + rejoined + updated + departures.len();
    let seen = next_events(&mut events, expected).await;
    assert_no_pending_event(&*f.store, &mut events, &t).await;
    assert!(created >= created_here);

    // Replay: every event must make sense against the state so far.
    let mut state: BTreeMap<PresenceKey, Entry> = BTreeMap::new();
    let mut present: BTreeMap<MemberId, bool> = BTreeMap::new();
    let has_member =
        |state: &BTreeMap<PresenceKey, Entry>, m: &MemberId| state.keys().any(|k| k.member == *m);
    let mut leave_events: Vec<Departure> = Vec::new();
    for (i, event) in seen.iter().enumerate() {
        match event {
            Event::Join {
                entry,
                first_for_member,
            } => {
                assert_eq!(
                    *first_for_member,
                    !has_member(&state, &entry.key.member),
                    "event {i}: {event:?}"
                );
                if *first_for_member {
                    let was = present
                        .insert(entry.key.member.clone(), true)
                        .unwrap_or(false);
                    assert!(!was, "event {i}: a first join while the member was present");
                }
                assert!(
                    state.insert(entry.key.clone(), entry.clone()).is_none(),
                    "event {i}: joined twice"
                );
            }
            Event::Update { entry } => {
                let old = state
                    .get_mut(&entry.key)
                    .unwrap_or_else(|| panic!("event {i}: update of an absent entry"));
                assert_eq!(old.joined_at, entry.joined_at, "event {i}");
                *old = entry.clone();
            }
            Event::Leave { departure } => {
                let k = &departure.entry.key;
                let old = state
                    .remove(k)
                    .unwrap_or_else(|| panic!("event {i}: leave of an absent entry"));
                assert_eq!(old.joined_at, departure.entry.joined_at, "event {i}");
                assert_eq!(
                    departure.last_for_member,
                    !has_member(&state, &k.member),
                    "event {i}: {event:?}"
                );
                if departure.last_for_member {
                    let was = present.insert(k.member.clone(), false).unwrap_or(false);
                    assert!(was, "event {i}: a last leave while the member was absent");
                }
                leave_events.push(departure.clone());
            }
            Event::Resync => panic!("event {i}: Resync with a buffer of 65536"),
            other => panic!("event {i}: unexpected {other:?}"),
        }
    }
    let replayed: Vec<(PresenceKey, Meta, Timestamp)> = state
        .into_values()
        .map(|e| (e.key, e.meta, e.joined_at))
        .collect();
    let mut stored: Vec<(PresenceKey, Meta, Timestamp)> = final_members
        .iter()
        .flat_map(|m| m.entries())
        .map(|e| (e.key, e.meta, e.joined_at))
        .collect();
    stored.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        replayed, stored,
        "replaying the events gives the final state"
    );

    // The subscriber saw exactly the departures the callers were told of.
    let key_of = |d: &Departure| {
        (
            d.entry.key.clone(),
            d.entry.joined_at,
            d.reason,
            d.last_for_member,
        )
    };
    let mut told: Vec<_> = departures.iter().map(|d| key_of(d)).collect();
    let mut heard: Vec<_> = leave_events.iter().map(key_of).collect();
    told.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    heard.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    assert_eq!(told, heard);
}

async fn churn_task(
    store: &dyn PresenceStore,
    clock: &presence_core::ManualClock,
    counter: &std::sync::atomic::AtomicU64,
    task: usize,
) -> Effects {
    let mut rng = Rng::new(task as u64 + 1);
    let mut effects = Effects::default();
    let members = ["m0", "m1", "m2", "m3"];
    let connections = ["c0", "c1", "c2"];
    let topics = ["churn", "churn", "side"];
    let unique_meta = || {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        meta(json!({ "n": n }))
    };
    for _ in 0..250 {
        let k = key(
            rng.pick(&topics),
            rng.pick(&members),
            rng.pick(&connections),
        );
        match (task, rng.below(10)) {
            // Tasks 4 and 5 are sweepers, racing each other and the writers.
            (4, _) => effects.departures.extend(
                store
                    .sweep_all(presence_core::Clock::now(clock) - Duration::from_millis(60))
                    .await
                    .unwrap(),
            ),
            (5, _) => effects.departures.extend(
                store
                    .sweep(
                        &topic("churn"),
                        presence_core::Clock::now(clock) - Duration::from_millis(60),
                    )
                    .await
                    .unwrap(),
            ),
            (_, 0..=3) => {
                // Unique meta: every re-join changes meta and so emits Update.
                let joined = store.join(&k, unique_meta()).await.unwrap();
                if joined.was_present {
                    effects.rejoined += usize::from(k.topic.as_str() == "churn");
                } else {
                    effects.created.push(joined.entry);
                }
            }
            (_, 4) => {
                if store.update(&k, unique_meta()).await.unwrap().is_some() {
                    effects.updated += usize::from(k.topic.as_str() == "churn");
                }
            }
            (_, 5) => {
                store.touch(&k).await.unwrap();
            }
            (_, 6) => effects.departures.extend(store.leave(&k).await.unwrap()),
            (_, 7) => effects
                .departures
                .extend(store.leave_member(&k.topic, &k.member).await.unwrap()),
            (_, 8) => effects
                .departures
                .extend(store.disconnect(&k.member, &k.connection).await.unwrap()),
            _ => {
                clock.advance(Duration::from_millis(rng.below(15)));
            }
        }
        if rng.below(4) == 0 {
            tokio::task::yield_now().await;
        }
    }
    effects
}
