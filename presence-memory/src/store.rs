//! `MemoryStore`: the `PresenceStore` contract over sharded in-process maps.

use std::collections::HashSet;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use async_trait::async_trait;
use presence_core::{
    Clock, ConnectionId, Counts, Departure, Entry, Error, Event, EventStream, Joined, Member,
    MemberId, Meta, PresenceKey, PresenceStore, Reason, Result, Timestamp, Topic, check_batch,
    metrics,
};

use crate::MemoryConfig;
use crate::index::MemberShard;
use crate::topic::{TopicShard, Upserted, leave_events};

/// The backend's name in errors, logs and metrics.
const BACKEND: &str = "memory";

/// The in-process store: every call completes under one short lock of the
/// topic's shard (a sweep takes each topic's in turn), so unrelated topics
/// never contend and no call awaits.
///
/// Cloning is cheap and clones share the same entries.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    config: MemoryConfig,
    topics: Box<[Mutex<TopicShard>]>,
    members: Box<[Mutex<MemberShard>]>,
    shard_hasher: foldhash::fast::RandomState,
    /// Set by `close`; read under a shard's lock, so a call either finishes
    /// before `close` passes its shard or sees it closed.
    closed: AtomicBool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // No code path panics while holding a shard lock, and a poisoned shard
    // still holds consistent maps: keep serving.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MemoryStore {
    /// A store with the default configuration.
    pub fn new() -> Self {
        Self::with_config(MemoryConfig::default())
    }

    /// A store with `config`.
    pub fn with_config(config: MemoryConfig) -> Self {
        let shards = config.shards.max(1);
        Self {
            inner: Arc::new(Inner {
                topics: (0..shards)
                    .map(|_| Mutex::new(TopicShard::new(config.event_buffer)))
                    .collect(),
                members: (0..shards).map(|_| Mutex::default()).collect(),
                shard_hasher: foldhash::fast::RandomState::default(),
                closed: AtomicBool::new(false),
                config,
            }),
        }
    }

    /// The configuration the store was built with.
    pub fn config(&self) -> &MemoryConfig {
        &self.inner.config
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Inner {
    fn now(&self) -> i64 {
        self.config.clock.now().as_millis()
    }

    fn shard_of(&self, name: &str, shards: usize) -> usize {
        (self.shard_hasher.hash_one(name) % shards as u64) as usize
    }

    /// The shard of `topic`, locked; `Error::Closed` once the store is.
    fn topic_shard(&self, topic: &str) -> Result<MutexGuard<'_, TopicShard>> {
        let shard = lock(&self.topics[self.shard_of(topic, self.topics.len())]);
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed { backend: BACKEND });
        }
        Ok(shard)
    }

    fn member_shard(&self, member: &str) -> MutexGuard<'_, MemberShard> {
        lock(&self.members[self.shard_of(member, self.members.len())])
    }

    /// Takes removed entries out of the member index and tells the topic's
    /// subscribers. Called with the topic's shard locked, so the index and
    /// the events follow the same order as the entries.
    fn departed(&self, shard: &mut TopicShard, topic: &Topic, departures: &[Departure]) {
        for departure in departures {
            let key = &departure.entry.key;
            self.member_shard(&key.member)
                .remove(&key.member, &key.topic);
        }
        if !departures.is_empty() {
            metrics::departed(BACKEND, departures);
            shard.channels.send(topic, || leave_events(departures));
        }
    }

    fn join(&self, key: &PresenceKey, meta: Meta, max_members: Option<u32>) -> Result<Joined> {
        meta.check_size(self.config.max_meta_bytes)?;
        let now = self.now();
        let mut shard = self.topic_shard(&key.topic)?;
        if let Some(max_members) = max_members
            && shard.is_full_for(&key.topic, &key.member, max_members)
        {
            metrics::join_refused(BACKEND);
            return Err(Error::TopicFull {
                topic: key.topic.clone(),
                max_members,
            });
        }
        match shard.upsert(key, meta, now) {
            Upserted::Created {
                entry,
                first_for_member,
            } => {
                self.member_shard(&key.member).add(&key.member, &key.topic);
                shard.channels.send(&key.topic, || {
                    vec![Event::Join {
                        entry: entry.clone(),
                        first_for_member,
                    }]
                });
                let joined = Joined {
                    entry,
                    first_for_member,
                    was_present: false,
                };
                metrics::joined(BACKEND, &joined);
                Ok(joined)
            }
            Upserted::Refreshed {
                entry,
                meta_changed,
            } => {
                if meta_changed {
                    shard.channels.send(&key.topic, || {
                        vec![Event::Update {
                            entry: entry.clone(),
                        }]
                    });
                }
                let joined = Joined {
                    entry,
                    first_for_member: false,
                    was_present: true,
                };
                metrics::joined(BACKEND, &joined);
                Ok(joined)
            }
        }
    }

    /// Removes the connections of `member` in `topic` that `doomed` picks.
    fn remove_member(
        &self,
        topic: &Topic,
        member: &MemberId,
        reason: Reason,
        doomed: impl FnMut(&crate::topic::ConnState) -> bool,
    ) -> Result<Vec<Departure>> {
        let mut shard = self.topic_shard(topic)?;
        let departures = shard.remove_member_where(topic, member, reason, doomed);
        self.departed(&mut shard, topic, &departures);
        Ok(departures)
    }

    /// Sweeps one topic of a locked shard.
    fn sweep_locked(
        &self,
        shard: &mut TopicShard,
        topic: &Topic,
        older_than: i64,
    ) -> Vec<Departure> {
        if !shard.may_expire(topic, older_than) {
            return Vec::new();
        }
        let departures = shard.remove_where(topic, Reason::Expired, |_, conn| {
            conn.last_seen_at < older_than
        });
        self.departed(shard, topic, &departures);
        departures
    }
}

fn by_key(departures: &mut [Departure]) {
    departures.sort_by(|a, b| a.entry.key.cmp(&b.entry.key));
}

#[async_trait]
impl PresenceStore for MemoryStore {
    async fn join(&self, key: &PresenceKey, meta: Meta) -> Result<Joined> {
        self.inner.join(key, meta, None)
    }

    async fn join_limited(
        &self,
        key: &PresenceKey,
        meta: Meta,
        max_members: u32,
    ) -> Result<Joined> {
        self.inner.join(key, meta, Some(max_members))
    }

    async fn update(&self, key: &PresenceKey, meta: Meta) -> Result<Option<Entry>> {
        meta.check_size(self.inner.config.max_meta_bytes)?;
        let now = self.inner.now();
        let mut shard = self.inner.topic_shard(&key.topic)?;
        let Some(conn) = shard.refresh(key, Some(meta), now) else {
            return Ok(None);
        };
        let entry = conn.entry(&key.topic, &key.member);
        shard.channels.send(&key.topic, || {
            vec![Event::Update {
                entry: entry.clone(),
            }]
        });
        Ok(Some(entry))
    }

    async fn touch(&self, key: &PresenceKey) -> Result<bool> {
        let now = self.inner.now();
        let present = self
            .inner
            .topic_shard(&key.topic)?
            .refresh(key, None, now)
            .is_some();
        metrics::touched(BACKEND, 1, usize::from(!present));
        Ok(present)
    }

    async fn touch_many(&self, keys: &[PresenceKey]) -> Result<Vec<PresenceKey>> {
        check_batch(keys)?;
        let now = self.inner.now();
        let mut absent = Vec::new();
        for key in keys {
            if self
                .inner
                .topic_shard(&key.topic)?
                .refresh(key, None, now)
                .is_none()
            {
                absent.push(key.clone());
            }
        }
        metrics::touched(BACKEND, keys.len(), absent.len());
        if absent.len() > 1 {
            let mut seen = HashSet::with_capacity(absent.len());
            absent.retain(|key| seen.insert(key.clone()));
        }
        Ok(absent)
    }

    async fn leave(&self, key: &PresenceKey) -> Result<Option<Departure>> {
        let mut departures =
            self.inner
                .remove_member(&key.topic, &key.member, Reason::Left, |conn| {
                    conn.id == key.connection
                })?;
        Ok(departures.pop())
    }

    async fn leave_member(&self, topic: &Topic, member: &MemberId) -> Result<Vec<Departure>> {
        self.inner
            .remove_member(topic, member, Reason::Left, |_| true)
    }

    async fn disconnect(
        &self,
        member: &MemberId,
        connection: &ConnectionId,
    ) -> Result<Vec<Departure>> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed { backend: BACKEND });
        }
        // Read the index, then remove topic by topic: a join that lands after
        // the read is ordered after this disconnect.
        let topics = self.inner.member_shard(member).topics_of(member);
        let mut departures = Vec::new();
        for topic in topics {
            departures.extend(self.inner.remove_member(
                &topic,
                member,
                Reason::Disconnected,
                |conn| conn.id == *connection,
            )?);
        }
        by_key(&mut departures);
        Ok(departures)
    }

    async fn members(&self, topic: &Topic) -> Result<Vec<Member>> {
        let mut members: Vec<Member> = {
            let shard = self.inner.topic_shard(topic)?;
            let Some(state) = shard.topics.get(topic.as_str()) else {
                return Ok(Vec::new());
            };
            state
                .members
                .iter()
                .map(|(member, connections)| member_view(topic, member, connections))
                .collect()
        };
        members.sort_by(|a, b| (a.joined_at, &a.member).cmp(&(b.joined_at, &b.member)));
        Ok(members)
    }

    async fn member(&self, topic: &Topic, member: &MemberId) -> Result<Option<Member>> {
        let shard = self.inner.topic_shard(topic)?;
        Ok(shard
            .topics
            .get(topic.as_str())
            .and_then(|state| state.members.get_key_value(member.as_str()))
            .map(|(member, connections)| member_view(topic, member, connections)))
    }

    async fn count(&self, topic: &Topic) -> Result<Counts> {
        Ok(self.inner.topic_shard(topic)?.counts(topic))
    }

    async fn sweep(&self, topic: &Topic, older_than: Timestamp) -> Result<Vec<Departure>> {
        let mut shard = self.inner.topic_shard(topic)?;
        Ok(self
            .inner
            .sweep_locked(&mut shard, topic, older_than.as_millis()))
    }

    /// Visits only the topics that may hold an expired entry, each under
    /// its shard's lock alone, so a mass expiry never holds a shard for
    /// longer than one topic takes.
    async fn sweep_all(&self, older_than: Timestamp) -> Result<Vec<Departure>> {
        let started = Instant::now();
        let older_than = older_than.as_millis();
        let mut departures = Vec::new();
        for (i, shard) in self.inner.topics.iter().enumerate() {
            let due = {
                let shard = lock(shard);
                if self.inner.closed.load(Ordering::Acquire) {
                    return Err(Error::Closed { backend: BACKEND });
                }
                shard.due_for_sweep(older_than)
            };
            for topic in due {
                let mut shard = lock(&self.inner.topics[i]);
                departures.extend(self.inner.sweep_locked(&mut shard, &topic, older_than));
            }
        }
        by_key(&mut departures);
        let took = started.elapsed();
        metrics::sweep(BACKEND, took);
        tracing::debug!(removed = departures.len(), ?took, "memory sweep_all");
        Ok(departures)
    }

    async fn topics_of(&self, member: &MemberId) -> Result<Vec<Topic>> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed { backend: BACKEND });
        }
        Ok(self.inner.member_shard(member).topics_of(member))
    }

    async fn subscribe(&self, topic: &Topic) -> Result<EventStream> {
        Ok(self.inner.topic_shard(topic)?.channels.subscribe(topic))
    }

    fn clock(&self) -> Arc<dyn Clock> {
        self.inner.config.clock.clone()
    }

    fn max_meta_bytes(&self) -> usize {
        self.inner.config.max_meta_bytes
    }

    fn events_are_complete(&self) -> bool {
        // Only this process can write it.
        true
    }

    /// Marks the store closed, then takes each shard's lock in turn, so
    /// every call still inside one finishes first, and ends the shard's
    /// event streams. The entries are dropped with the last handle.
    async fn close(&self) -> Result<()> {
        self.inner.closed.store(true, Ordering::Release);
        for shard in self.inner.topics.iter() {
            lock(shard).channels.close();
        }
        Ok(())
    }
}

fn member_view(
    topic: &Topic,
    member: &MemberId,
    connections: &crate::topic::Connections,
) -> Member {
    let mut connections: Vec<presence_core::Connection> = connections
        .iter()
        .map(|conn| presence_core::Connection {
            connection: conn.id.clone(),
            meta: conn.meta.clone(),
            joined_at: Timestamp::from_millis(conn.joined_at),
            last_seen_at: Timestamp::from_millis(conn.last_seen_at),
        })
        .collect();
    connections.sort_by(|a, b| (a.joined_at, &a.connection).cmp(&(b.joined_at, &b.connection)));
    Member {
        topic: topic.clone(),
        member: member.clone(),
        joined_at: connections
            .iter()
            .map(|c| c.joined_at)
            .min()
            .expect("never empty"),
        last_seen_at: connections
            .iter()
            .map(|c| c.last_seen_at)
            .max()
            .expect("never empty"),
        connections,
    }
}
