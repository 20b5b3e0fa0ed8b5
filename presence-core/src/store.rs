//! The `PresenceStore` trait every backend implements.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::{
    Clock, ConnectionId, Counts, Departure, Entry, Error, Event, Joined, Member, MemberId, Meta,
    PresenceKey, Result, Timestamp, Topic,
};

/// The most keys one batch call (`touch_many`) takes.
pub const MAX_BATCH_KEYS: usize = 10_000;

/// Checks the batch rule; the error names the field `keys`.
pub fn check_batch(keys: &[PresenceKey]) -> Result<()> {
    if keys.len() > MAX_BATCH_KEYS {
        return Err(Error::invalid(
            "keys",
            format!(
                "holds {} keys, the limit is {MAX_BATCH_KEYS} per call",
                keys.len()
            ),
        ));
    }
    Ok(())
}

/// The live events of one topic; see [`PresenceStore::subscribe`].
pub type EventStream = BoxStream<'static, Event>;

/// Who is here right now: the storage contract every backend implements.
///
/// Use it as `Arc<dyn PresenceStore>`; conveniences built on it are in
/// [`PresenceStoreExt`].
///
/// # Contract
///
/// - **Input.** Ids are valid by construction ([`Topic`], [`MemberId`],
///   [`ConnectionId`]), meta by [`Meta`]; a store additionally refuses meta
///   larger than its `max_meta_bytes` and batches of more than
///   [`MAX_BATCH_KEYS`] keys. A refused call changes nothing and emits no event.
/// - **Time.** Every timestamp comes from the store's [`Clock`], in whole
///   milliseconds.
/// - **Order.** `members` orders members by `joined_at`, then member id, and
///   each member's connections by `joined_at`, then connection id. Every call
///   that returns several departures returns them ordered by topic, member,
///   connection; of several departures of one member, the last carries
///   `last_for_member` (when the member has no connection left), and events
///   are emitted in that same order.
/// - **Events.** Each committed change of a topic reaches its subscribers in
///   commit order: a `Join` for a join that created an entry, an `Update` for
///   `update` and for a re-join that changed meta, a `Leave` for every
///   removal. `touch` emits nothing. A subscriber that falls behind gets
///   [`Event::Resync`] instead of blocking writers.
/// - **Shutdown.** [`close`](PresenceStore::close) finishes what was
///   queued, ends the event streams and stops background work; afterwards
///   every call fails with [`Error::Closed`].
/// - **Concurrency.** Concurrent sweeps report every expired entry once;
///   concurrent joins of one key leave one entry and exactly one of them sees
///   `was_present = false`; `join_limited` is exact under concurrent joins.
#[async_trait]
pub trait PresenceStore: Send + Sync + Debug + 'static {
    /// Upserts the entry. A re-join replaces `meta`, refreshes `last_seen_at`
    /// and keeps `joined_at`.
    async fn join(&self, key: &PresenceKey, meta: Meta) -> Result<Joined>;

    /// As [`join`](Self::join), but a member not yet present is refused with
    /// [`Error::TopicFull`] when the topic already has `max_members` members.
    /// A further connection of a present member is always let in.
    async fn join_limited(&self, key: &PresenceKey, meta: Meta, max_members: u32)
    -> Result<Joined>;

    /// Replaces the meta of an existing entry and refreshes `last_seen_at`;
    /// `None` (and nothing created) when the entry is absent.
    async fn update(&self, key: &PresenceKey, meta: Meta) -> Result<Option<Entry>>;

    /// Refreshes `last_seen_at`: the heartbeat. Returns whether the entry was
    /// present. Emits no event.
    async fn touch(&self, key: &PresenceKey) -> Result<bool>;

    /// [`touch`](Self::touch) for many keys in one round trip. Returns the
    /// keys that were absent, in the order given, each once, so clients can
    /// re-join.
    async fn touch_many(&self, keys: &[PresenceKey]) -> Result<Vec<PresenceKey>>;

    /// Removes one connection.
    async fn leave(&self, key: &PresenceKey) -> Result<Option<Departure>>;

    /// Removes all of a member's connections in a topic.
    async fn leave_member(&self, topic: &Topic, member: &MemberId) -> Result<Vec<Departure>>;

    /// Removes this connection from every topic (its socket closed).
    async fn disconnect(
        &self,
        member: &MemberId,
        connection: &ConnectionId,
    ) -> Result<Vec<Departure>>;

    /// Every member of the topic, with its connections.
    async fn members(&self, topic: &Topic) -> Result<Vec<Member>>;

    /// One member of the topic, if present.
    async fn member(&self, topic: &Topic, member: &MemberId) -> Result<Option<Member>>;

    /// How many members and connections the topic has, without reading meta.
    async fn count(&self, topic: &Topic) -> Result<Counts>;

    /// Atomically removes the topic's entries with `last_seen_at < older_than`
    /// (an entry seen exactly at `older_than` stays), reason `Expired`.
    async fn sweep(&self, topic: &Topic, older_than: Timestamp) -> Result<Vec<Departure>>;

    /// [`sweep`](Self::sweep) over every topic, for a periodic sweeper.
    async fn sweep_all(&self, older_than: Timestamp) -> Result<Vec<Departure>>;

    /// The topics where the member has a connection, sorted.
    async fn topics_of(&self, member: &MemberId) -> Result<Vec<Topic>>;

    /// The live events of a topic, from now on. The stream ends when the
    /// store is closed.
    async fn subscribe(&self, topic: &Topic) -> Result<EventStream>;

    /// The clock the store takes its timestamps from.
    fn clock(&self) -> Arc<dyn Clock>;

    /// The largest meta this store accepts, serialized, in bytes.
    fn max_meta_bytes(&self) -> usize;

    /// Whether [`subscribe`](Self::subscribe) sees every change of the
    /// store's data, whoever makes it. `false` where other processes may
    /// write the same data and keep their events to themselves (a SQLite
    /// file): helpers that follow a topic (`LiveMembers`, channel rooms)
    /// then also re-read it on an interval.
    fn events_are_complete(&self) -> bool;

    /// Shuts the store down in order: waits for the calls already made
    /// (writes queued in a batch or a group commit are committed and
    /// answered), ends every event stream once it has delivered the events
    /// committed before, stops the store's background tasks and threads and
    /// waits for them, and releases its connections and files.
    ///
    /// Every call made after `close` returns, on this handle or any clone,
    /// fails with [`Error::Closed`] and changes nothing. Closing again does
    /// nothing. Dropping a store without closing it is safe too, but does
    /// not wait.
    async fn close(&self) -> Result<()>;
}

/// Conveniences every [`PresenceStore`] gets for free.
#[async_trait]
pub trait PresenceStoreExt: PresenceStore {
    /// Sweeps every topic of entries not seen within `ttl` of the store's now.
    async fn sweep_expired(&self, ttl: Duration) -> Result<Vec<Departure>> {
        let older_than = self.clock().now() - ttl;
        self.sweep_all(older_than).await
    }

    /// Sweeps one topic of entries not seen within `ttl` of the store's now.
    async fn sweep_topic_expired(&self, topic: &Topic, ttl: Duration) -> Result<Vec<Departure>> {
        let older_than = self.clock().now() - ttl;
        self.sweep(topic, older_than).await
    }
}

impl<S: PresenceStore + ?Sized> PresenceStoreExt for S {}
