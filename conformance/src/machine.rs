//! The proptest state machine: random sequences of every call, applied to
//! the backend and to the reference model; every result, the final state and
//! every event must match.

use std::collections::BTreeMap;
use std::time::Duration;

use presence_core::{EventStream, Meta, PresenceKey, PresenceStore};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::json;

use crate::model::{Failure, Model};
use crate::support::{Fixture, assert_no_pending_event, connection, member, next_events, topic};
use crate::{Backend, Setup};

/// Ids that collide often and differ only by case.
const TOPICS: &[&str] = &["room", "Room", "doc:1"];
const MEMBERS: &[&str] = &["alice", "Alice", "bob", "carol"];
const CONNECTIONS: &[&str] = &["c1", "C1", "c2"];
/// The state machine's stores refuse meta over this many bytes.
const MAX_META_BYTES: usize = 64;

fn meta_of(choice: u8) -> Meta {
    let value = match choice {
        0 => json!(null),
        1 => json!({"a": 1}),
        2 => json!({"a": 2}),
        3 => json!({"typing": true, "name": "Ada"}),
        // Over MAX_META_BYTES: refused, changing nothing.
        _ => json!({"blob": "x".repeat(MAX_META_BYTES)}),
    };
    Meta::from_value(value).expect("valid meta")
}

/// One call of the state machine. Ids are names from the pools above.
#[derive(Clone, Debug)]
pub enum Op {
    /// `join`
    Join(Key, u8),
    /// `join_limited` with a small limit.
    JoinLimited(Key, u8, u32),
    /// `update`
    Update(Key, u8),
    /// `touch`
    Touch(Key),
    /// `touch_many`
    TouchMany(Vec<Key>),
    /// `leave`
    Leave(Key),
    /// `leave_member`
    LeaveMember(&'static str, &'static str),
    /// `disconnect`
    Disconnect(&'static str, &'static str),
    /// `sweep` of entries older than now minus the age in ms.
    Sweep(&'static str, u64),
    /// `sweep_all` likewise.
    SweepAll(u64),
    /// `members`
    Members(&'static str),
    /// `member`
    Member(&'static str, &'static str),
    /// `count`
    Count(&'static str),
    /// `topics_of`
    TopicsOf(&'static str),
    /// Moves the clock forward (0 keeps equal timestamps, to test ties).
    Advance(u64),
}

/// `(topic, member, connection)` names.
pub type Key = (&'static str, &'static str, &'static str);

fn to_key((t, m, c): Key) -> PresenceKey {
    crate::support::key(t, m, c)
}

fn key_strategy() -> impl Strategy<Value = Key> {
    (
        prop::sample::select(TOPICS),
        prop::sample::select(MEMBERS),
        prop::sample::select(CONNECTIONS),
    )
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let t = || prop::sample::select(TOPICS);
    let m = || prop::sample::select(MEMBERS);
    prop_oneof![
        6 => (key_strategy(), 0u8..5).prop_map(|(k, meta)| Op::Join(k, meta)),
        2 => (key_strategy(), 0u8..5, 0u32..4).prop_map(|(k, meta, max)| Op::JoinLimited(k, meta, max)),
        2 => (key_strategy(), 0u8..5).prop_map(|(k, meta)| Op::Update(k, meta)),
        2 => key_strategy().prop_map(Op::Touch),
        1 => prop::collection::vec(key_strategy(), 0..6).prop_map(Op::TouchMany),
        3 => key_strategy().prop_map(Op::Leave),
        1 => (t(), m()).prop_map(|(t, m)| Op::LeaveMember(t, m)),
        1 => (m(), prop::sample::select(CONNECTIONS)).prop_map(|(m, c)| Op::Disconnect(m, c)),
        1 => (t(), 0u64..3_000).prop_map(|(t, age)| Op::Sweep(t, age)),
        1 => (0u64..3_000).prop_map(Op::SweepAll),
        1 => t().prop_map(Op::Members),
        1 => (t(), m()).prop_map(|(t, m)| Op::Member(t, m)),
        1 => t().prop_map(Op::Count),
        1 => m().prop_map(Op::TopicsOf),
        3 => prop_oneof![Just(0u64), 1u64..1_500].prop_map(Op::Advance),
    ]
}

/// Random call sequences (at least 256 cases, more with `PROPTEST_CASES`)
/// give the same results, state and events on the backend as on the model.
pub async fn state_machine_matches_model(backend: &dyn Backend) {
    let config = Config {
        cases: Config::default().cases.max(256),
        failure_persistence: None,
        ..Config::default()
    };
    let handle = tokio::runtime::Handle::current();
    tokio::task::block_in_place(|| {
        let mut runner = TestRunner::new(config);
        let strategy = prop::collection::vec(op_strategy(), 1..60);
        if let Err(err) = runner.run(&strategy, |ops| handle.block_on(run_case(backend, &ops))) {
            panic!("the state machine found a difference from the model: {err}");
        }
    });
}

async fn run_case(backend: &dyn Backend, ops: &[Op]) -> Result<(), TestCaseError> {
    let setup = Setup {
        max_meta_bytes: MAX_META_BYTES,
        ..Setup::default()
    };
    let f = Fixture::with(backend, setup).await;
    let store: &dyn PresenceStore = &*f.store;
    let mut model = Model::new(MAX_META_BYTES);
    let mut streams: BTreeMap<&str, EventStream> = BTreeMap::new();
    for name in TOPICS {
        streams.insert(
            name,
            store.subscribe(&topic(name)).await.expect("subscribe"),
        );
    }

    for (step, op) in ops.iter().enumerate() {
        let now = f.now();
        let ago = |age: u64| now - Duration::from_millis(age);
        match op {
            Op::Join(k, meta) => {
                let got = store.join(&to_key(*k), meta_of(*meta)).await;
                let want = model.join(&to_key(*k), meta_of(*meta), None, now);
                prop_assert_eq!(
                    got.map_err(|e| Failure::of(&e)),
                    want,
                    "step {}: {:?}",
                    step,
                    op
                );
            }
            Op::JoinLimited(k, meta, max) => {
                let got = store.join_limited(&to_key(*k), meta_of(*meta), *max).await;
                let want = model.join(&to_key(*k), meta_of(*meta), Some(*max), now);
                prop_assert_eq!(
                    got.map_err(|e| Failure::of(&e)),
                    want,
                    "step {}: {:?}",
                    step,
                    op
                );
            }
            Op::Update(k, meta) => {
                let got = store.update(&to_key(*k), meta_of(*meta)).await;
                let want = model.update(&to_key(*k), meta_of(*meta), now);
                prop_assert_eq!(
                    got.map_err(|e| Failure::of(&e)),
                    want,
                    "step {}: {:?}",
                    step,
                    op
                );
            }
            Op::Touch(k) => {
                let got = store.touch(&to_key(*k)).await.expect("touch");
                prop_assert_eq!(
                    got,
                    model.touch(&to_key(*k), now),
                    "step {}: {:?}",
                    step,
                    op
                );
            }
            Op::TouchMany(keys) => {
                let keys: Vec<PresenceKey> = keys.iter().copied().map(to_key).collect();
                let got = store.touch_many(&keys).await.expect("touch_many");
                prop_assert_eq!(got, model.touch_many(&keys, now), "step {}: {:?}", step, op);
            }
            Op::Leave(k) => {
                let got = store.leave(&to_key(*k)).await.expect("leave");
                prop_assert_eq!(got, model.leave(&to_key(*k)), "step {}: {:?}", step, op);
            }
            Op::LeaveMember(t, m) => {
                let got = store
                    .leave_member(&topic(t), &member(m))
                    .await
                    .expect("leave_member");
                prop_assert_eq!(
                    got,
                    model.leave_member(&topic(t), &member(m)),
                    "step {}: {:?}",
                    step,
                    op
                );
            }
            Op::Disconnect(m, c) => {
                let got = store
                    .disconnect(&member(m), &connection(c))
                    .await
                    .expect("disconnect");
                prop_assert_eq!(
                    got,
                    model.disconnect(&member(m), &connection(c)),
                    "step {}: {:?}",
                    step,
                    op
                );
            }
            Op::Sweep(t, age) => {
                let got = store.sweep(&topic(t), ago(*age)).await.expect("sweep");
                prop_assert_eq!(
                    got,
                    model.sweep(Some(&topic(t)), ago(*age)),
                    "step {}: {:?}",
                    step,
                    op
                );
            }
            Op::SweepAll(age) => {
                let got = store.sweep_all(ago(*age)).await.expect("sweep_all");
                prop_assert_eq!(got, model.sweep(None, ago(*age)), "step {}: {:?}", step, op);
            }
            Op::Members(t) => {
                let got = store.members(&topic(t)).await.expect("members");
                prop_assert_eq!(got, model.members(&topic(t)), "step {}: {:?}", step, op);
            }
            Op::Member(t, m) => {
                let got = store.member(&topic(t), &member(m)).await.expect("member");
                prop_assert_eq!(
                    got,
                    model.member(&topic(t), &member(m)),
                    "step {}: {:?}",
                    step,
                    op
                );
            }
            Op::Count(t) => {
                let got = store.count(&topic(t)).await.expect("count");
                prop_assert_eq!(got, model.count(&topic(t)), "step {}: {:?}", step, op);
            }
            Op::TopicsOf(m) => {
                let got = store.topics_of(&member(m)).await.expect("topics_of");
                prop_assert_eq!(got, model.topics_of(&member(m)), "step {}: {:?}", step, op);
            }
            Op::Advance(millis) => {
                f.advance(*millis);
            }
        }
    }

    for name in TOPICS {
        let t = topic(name);
        prop_assert_eq!(
            store.members(&t).await.expect("members"),
            model.members(&t),
            "final members of {}",
            name
        );
        prop_assert_eq!(
            store.count(&t).await.expect("count"),
            model.count(&t),
            "final count of {}",
            name
        );
        let want = model.events.get(&t).cloned().unwrap_or_default();
        let stream = streams.get_mut(name).expect("subscribed");
        let got = next_events(stream, want.len()).await;
        prop_assert_eq!(got, want, "events of {}", name);
        assert_no_pending_event(store, stream, &t).await;
    }
    for name in MEMBERS {
        prop_assert_eq!(
            store.topics_of(&member(name)).await.expect("topics_of"),
            model.topics_of(&member(name)),
            "final topics of {}",
            name
        );
    }
    Ok(())
}
