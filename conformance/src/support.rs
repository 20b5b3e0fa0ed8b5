//! Fixtures and helpers shared by the properties.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use presence_core::{
    ConnectionId, Departure, Event, EventStream, ManualClock, MemberId, Meta, PresenceKey,
    PresenceStore, Timestamp, Topic,
};

use crate::{Backend, Setup};

/// How long a property waits for an event before calling it missing.
/// Generous, because the Postgres backend delivers events through the server.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// A fresh store and the clock that drives it.
pub struct Fixture {
    /// The store under test.
    pub store: Arc<dyn PresenceStore>,
    /// The store's clock.
    pub clock: ManualClock,
}

impl Fixture {
    /// A fresh store with the default [`Setup`].
    pub async fn open(backend: &dyn Backend) -> Self {
        Self::with(backend, Setup::default()).await
    }

    /// A fresh store with `setup`.
    pub async fn with(backend: &dyn Backend, setup: Setup) -> Self {
        let store = backend.open(&setup).await;
        Self {
            store,
            clock: setup.clock,
        }
    }

    /// Moves the clock forward by `millis`.
    pub fn advance(&self, millis: u64) -> Timestamp {
        self.clock.advance(Duration::from_millis(millis))
    }

    /// The clock's time.
    pub fn now(&self) -> Timestamp {
        presence_core::Clock::now(&self.clock)
    }
}

/// A key from string ids; panics on invalid ones (test input is valid).
pub fn key(topic: &str, member: &str, connection: &str) -> PresenceKey {
    PresenceKey::new(topic, member, connection).expect("valid test key")
}

/// A topic from a valid string.
pub fn topic(name: &str) -> Topic {
    Topic::new(name).expect("valid test topic")
}

/// A member id from a valid string.
pub fn member(name: &str) -> MemberId {
    MemberId::new(name).expect("valid test member")
}

/// A connection id from a valid string.
pub fn connection(name: &str) -> ConnectionId {
    ConnectionId::new(name).expect("valid test connection")
}

/// Meta from a JSON value; panics on an invalid one.
pub fn meta(value: serde_json::Value) -> Meta {
    Meta::from_value(value).expect("valid test meta")
}

/// The keys of some departures with their `last_for_member` flags, for
/// readable assertions.
pub fn departed(departures: &[Departure]) -> Vec<(String, String, String, bool)> {
    departures
        .iter()
        .map(|d| {
            let key = &d.entry.key;
            (
                key.topic.to_string(),
                key.member.to_string(),
                key.connection.to_string(),
                d.last_for_member,
            )
        })
        .collect()
}

/// The next event of `stream`; panics if none comes within [`EVENT_TIMEOUT`].
pub async fn next_event(stream: &mut EventStream) -> Event {
    match tokio::time::timeout(EVENT_TIMEOUT, stream.next()).await {
        Ok(Some(event)) => event,
        Ok(None) => panic!("the event stream ended"),
        Err(_) => panic!("no event arrived within {EVENT_TIMEOUT:?}"),
    }
}

/// The next `n` events of `stream`.
pub async fn next_events(stream: &mut EventStream, n: usize) -> Vec<Event> {
    let mut events = Vec::with_capacity(n);
    for _ in 0..n {
        events.push(next_event(stream).await);
    }
    events
}

/// Asserts that `stream` holds no event for `topic` before a fresh change:
/// makes a probe join and leave, and expects exactly their two events next.
/// Works on every backend, whatever its delivery latency, because events
/// arrive in commit order.
pub async fn assert_no_pending_event(
    store: &dyn PresenceStore,
    stream: &mut EventStream,
    topic: &Topic,
) {
    let probe = PresenceKey {
        topic: topic.clone(),
        member: member("~probe"),
        connection: connection("~probe"),
    };
    store.join(&probe, Meta::new()).await.expect("probe join");
    store.leave(&probe).await.expect("probe leave");
    match next_event(stream).await {
        Event::Join { entry, .. } if entry.key == probe => {}
        other => panic!("expected no event before the probe's join, got {other:?}"),
    }
    match next_event(stream).await {
        Event::Leave { departure } if departure.entry.key == probe => {}
        other => panic!("expected the probe's leave, got {other:?}"),
    }
}

/// A small deterministic random generator (xorshift64*), so concurrent
/// workloads are reproducible per task without a dependency.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// A number in `0..bound`.
    pub fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % bound
    }

    /// One of `items`.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

/// Every key present in `topic`.
pub async fn stored_keys(
    store: &dyn PresenceStore,
    topic: &Topic,
) -> std::collections::BTreeSet<PresenceKey> {
    let members = store.members(topic).await.expect("members");
    members
        .iter()
        .flat_map(|m| m.entries())
        .map(|e| e.key)
        .collect()
}

/// The ids of the members present in `topic`.
pub async fn member_ids(
    store: &dyn PresenceStore,
    topic: &Topic,
) -> std::collections::BTreeSet<MemberId> {
    let members = store.members(topic).await.expect("members");
    members.into_iter().map(|m| m.member).collect()
}
