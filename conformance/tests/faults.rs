//! The suite has teeth: the memory store with one injected fault fails the
//! property that guards against it (and the state machine, where the fault
//! is reachable by it).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use async_trait::async_trait;
use conformance::{Backend, Setup};
use presence_core::{
    Clock, ConnectionId, Counts, Departure, Entry, Error, EventStream, Joined, Member, MemberId,
    Meta, PresenceKey, PresenceStore, Result, Timestamp, Topic,
};
use presence_memory::{MemoryConfig, MemoryStore};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    /// A re-join replaces the entry (new joined_at, Leave + Join events).
    ForgetfulJoin,
    /// `sweep_all` reports every departure twice.
    DoubleSweep,
    /// `join_limited` checks the count, then joins: not atomic.
    RacyLimit,
    /// `leave_member` flags every departure `last_for_member`.
    EveryLeaveIsLast,
    /// `count` counts connections as members.
    CountsConnections,
    /// `touch` of an absent key creates it.
    TouchCreates,
    /// `close` does nothing: the store keeps taking calls.
    CloseIgnored,
}

#[derive(Debug)]
struct Faulty {
    inner: MemoryStore,
    fault: Fault,
}

#[async_trait]
impl PresenceStore for Faulty {
    async fn join(&self, key: &PresenceKey, meta: Meta) -> Result<Joined> {
        if self.fault == Fault::ForgetfulJoin && self.inner.leave(key).await?.is_some() {
            let mut joined = self.inner.join(key, meta).await?;
            joined.was_present = true;
            return Ok(joined);
        }
        self.inner.join(key, meta).await
    }
    async fn join_limited(&self, key: &PresenceKey, meta: Meta, max: u32) -> Result<Joined> {
        if self.fault == Fault::RacyLimit {
            let present = self.inner.member(&key.topic, &key.member).await?.is_some();
            let members = self.inner.count(&key.topic).await?.members;
            tokio::task::yield_now().await;
            if !present && members >= u64::from(max) {
                return Err(Error::TopicFull {
                    topic: key.topic.clone(),
                    max_members: max,
                });
            }
            return self.inner.join(key, meta).await;
        }
        self.inner.join_limited(key, meta, max).await
    }
    async fn update(&self, key: &PresenceKey, meta: Meta) -> Result<Option<Entry>> {
        self.inner.update(key, meta).await
    }
    async fn touch(&self, key: &PresenceKey) -> Result<bool> {
        if self.fault == Fault::TouchCreates && !self.inner.touch(key).await? {
            self.inner.join(key, Meta::new()).await?;
            return Ok(false);
        }
        self.inner.touch(key).await
    }
    async fn touch_many(&self, keys: &[PresenceKey]) -> Result<Vec<PresenceKey>> {
        self.inner.touch_many(keys).await
    }
    async fn leave(&self, key: &PresenceKey) -> Result<Option<Departure>> {
        self.inner.leave(key).await
    }
    async fn leave_member(&self, topic: &Topic, member: &MemberId) -> Result<Vec<Departure>> {
        let mut departures = self.inner.leave_member(topic, member).await?;
        if self.fault == Fault::EveryLeaveIsLast {
            departures.iter_mut().for_each(|d| d.last_for_member = true);
        }
        Ok(departures)
    }
    async fn disconnect(
        &self,
        member: &MemberId,
        connection: &ConnectionId,
    ) -> Result<Vec<Departure>> {
        self.inner.disconnect(member, connection).await
    }
    async fn members(&self, topic: &Topic) -> Result<Vec<Member>> {
        self.inner.members(topic).await
    }
    async fn member(&self, topic: &Topic, member: &MemberId) -> Result<Option<Member>> {
        self.inner.member(topic, member).await
    }
    async fn count(&self, topic: &Topic) -> Result<Counts> {
        let counts = self.inner.count(topic).await?;
        if self.fault == Fault::CountsConnections {
            return Ok(Counts {
                members: counts.connections,
                ..counts
            });
        }
        Ok(counts)
    }
    async fn sweep(&self, topic: &Topic, older_than: Timestamp) -> Result<Vec<Departure>> {
        self.inner.sweep(topic, older_than).await
    }
    async fn sweep_all(&self, older_than: Timestamp) -> Result<Vec<Departure>> {
        let departures = self.inner.sweep_all(older_than).await?;
        if self.fault == Fault::DoubleSweep {
            return Ok(departures.iter().chain(&departures).cloned().collect());
        }
        Ok(departures)
    }
    async fn topics_of(&self, member: &MemberId) -> Result<Vec<Topic>> {
        self.inner.topics_of(member).await
    }
    async fn subscribe(&self, topic: &Topic) -> Result<EventStream> {
        self.inner.subscribe(topic).await
    }
    fn clock(&self) -> Arc<dyn Clock> {
        self.inner.clock()
    }
    fn max_meta_bytes(&self) -> usize {
        self.inner.max_meta_bytes()
    }
    fn events_are_complete(&self) -> bool {
        self.inner.events_are_complete()
    }
    async fn close(&self) -> Result<()> {
        if self.fault == Fault::CloseIgnored {
            return Ok(());
        }
        self.inner.close().await
    }
}

struct FaultyBackend(Fault);

#[async_trait]
impl Backend for FaultyBackend {
    async fn open(&self, setup: &Setup) -> Arc<dyn PresenceStore> {
        let inner = MemoryStore::with_config(MemoryConfig {
            max_meta_bytes: setup.max_meta_bytes,
            event_buffer: setup.event_buffer,
            clock: Arc::new(setup.clock.clone()),
            ..MemoryConfig::default()
        });
        Arc::new(Faulty {
            inner,
            fault: self.0,
        })
    }
}

/// Runs `property` on a store with `fault` and returns its panic message;
/// fails the test if the property passed.
fn failure_of<F>(fault: Fault, property: impl FnOnce(FaultyBackend) -> F) -> String
where
    F: Future<Output = ()>,
{
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        conformance::run(property(FaultyBackend(fault)));
    }));
    match outcome {
        Ok(()) => panic!("the suite did not notice the fault {fault:?}"),
        Err(payload) => payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default(),
    }
}

macro_rules! caught {
    ($fault:expr, $property:ident, $needle:expr) => {{
        let message = failure_of($fault, |backend| async move {
            conformance::$property(&backend).await
        });
        assert!(
            message.contains($needle),
            "{:?} failed {} for another reason: {message}",
            $fault,
            stringify!($property)
        );
    }};
}

#[test]
fn a_forgetful_join_is_caught() {
    caught!(Fault::ForgetfulJoin, join_is_idempotent, "re-join");
    caught!(
        Fault::ForgetfulJoin,
        state_machine_matches_model,
        "difference from the model"
    );
}

#[test]
fn a_double_reporting_sweep_is_caught() {
    caught!(
        Fault::DoubleSweep,
        sweep_all_reports_each_member_once,
        "assertion"
    );
    caught!(
        Fault::DoubleSweep,
        concurrent_sweepers_report_each_entry_once,
        "reported more than once"
    );
    caught!(
        Fault::DoubleSweep,
        state_machine_matches_model,
        "difference from the model"
    );
}

#[test]
fn a_racy_member_limit_is_caught() {
    caught!(
        Fault::RacyLimit,
        join_limited_is_exact_under_contention,
        "exactly 10 of 50"
    );
}

#[test]
fn a_member_leaving_several_times_is_caught() {
    caught!(
        Fault::EveryLeaveIsLast,
        leave_member_removes_every_connection,
        "assertion"
    );
    caught!(
        Fault::EveryLeaveIsLast,
        state_machine_matches_model,
        "difference from the model"
    );
}

#[test]
fn a_count_of_connections_as_members_is_caught() {
    caught!(Fault::CountsConnections, count_matches_members, "assertion");
    caught!(
        Fault::CountsConnections,
        members_count_a_member_once,
        "assertion"
    );
}

#[test]
fn a_touch_that_creates_is_caught() {
    caught!(
        Fault::TouchCreates,
        touch_refreshes_only_last_seen,
        "touch creates nothing"
    );
    caught!(
        Fault::TouchCreates,
        state_machine_matches_model,
        "difference from the model"
    );
}

#[test]
fn a_close_that_does_nothing_is_caught() {
    caught!(
        Fault::CloseIgnored,
        close_ends_streams_and_refuses_calls,
        "did not end after close"
    );
}
