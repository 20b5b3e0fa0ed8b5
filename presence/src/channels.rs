//! Channel policies: who may see a topic, who may enter it, count-only
//! rooms, member limits, TTLs and member enrichment, over any store.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use crate::sync;
use futures::future::BoxFuture;
use futures::stream::{BoxStream, StreamExt};
use presence_core::{
    Counts, Departure, Entry, Error, Joined, Member, MemberId, Meta, PresenceKey, PresenceStore,
    Result, Timestamp, Topic, serde_json::Value,
};
use serde::Serialize;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_util::sync::CancellationToken;

use crate::sweeper::positive;
use crate::tracker::Group;
use crate::{LiveMembers, LiveUpdate, Tracked, Tracker, TrackerConfig};

/// Who may do something in a channel.
#[derive(Clone)]
pub enum Access {
    /// Anyone.
    Public,
    /// Only these members (an empty set: nobody).
    Only(BTreeSet<MemberId>),
    /// Whoever the app's check allows: groups, roles, plans. It runs on
    /// every checked call, so keep it cheap (resolve the group's members in
    /// the resolver, which is cached, and check a set here).
    Check(Arc<dyn Fn(&MemberId) -> bool + Send + Sync>),
}

impl Access {
    /// Only the members given.
    pub fn only<I>(members: I) -> Result<Self>
    where
        I: IntoIterator,
        I::Item: TryInto<MemberId>,
        Error: From<<I::Item as TryInto<MemberId>>::Error>,
    {
        let members = members
            .into_iter()
            .map(|m| m.try_into().map_err(Error::from))
            .collect::<Result<_>>()?;
        Ok(Access::Only(members))
    }

    /// Whoever `check` allows.
    pub fn check(check: impl Fn(&MemberId) -> bool + Send + Sync + 'static) -> Self {
        Access::Check(Arc::new(check))
    }

    /// Whether `member` is allowed.
    pub fn allows(&self, member: &MemberId) -> bool {
        match self {
            Access::Public => true,
            Access::Only(members) => members.contains(member),
            Access::Check(check) => check(member),
        }
    }
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Access::Public => f.write_str("Public"),
            Access::Only(members) => f.debug_tuple("Only").field(members).finish(),
            Access::Check(_) => f.write_str("Check(..)"),
        }
    }
}

/// The rules of one channel, returned by its resolver.
#[derive(Clone, Debug)]
pub struct ChannelConfig {
    /// Who may see the channel: its members, counts and events. Anyone
    /// else gets [`Error::NotFound`], as if it did not exist.
    pub view: Access,
    /// Who may enter (join) it. A viewer who may see but not enter gets
    /// [`Error::Forbidden`].
    pub enter: Access,
    /// Viewers get counts, never identities: `members` lists no one and
    /// `subscribe` yields counts only.
    pub count_only: bool,
    /// The most members at once, enforced with
    /// [`join_limited`](PresenceStore::join_limited), so exact under
    /// concurrent joins; a further connection of a present member is always
    /// let in.
    pub max_members: Option<u32>,
    /// How long an entry lives without a heartbeat: the TTL of
    /// [`Channels::track`] guards and of [`Channels::sweep_expired`].
    pub ttl: Duration,
}

impl ChannelConfig {
    /// Anyone may see and enter; no limit; a 60 s TTL.
    pub fn public() -> Self {
        Self {
            view: Access::Public,
            enter: Access::Public,
            count_only: false,
            max_members: None,
            ttl: Duration::from_secs(60),
        }
    }
}

impl Default for ChannelConfig {
    fn default() -> Self {
        Self::public()
    }
}

/// Returns a topic's config, or `None` for "no such channel".
pub type Resolver = Arc<dyn Fn(Topic) -> BoxFuture<'static, Option<ChannelConfig>> + Send + Sync>;

/// Turns member ids into the app's records (names, avatars) in one batch.
/// Ids missing from the answer get `null`.
pub type Enricher = Arc<
    dyn Fn(Vec<MemberId>) -> BoxFuture<'static, Result<HashMap<MemberId, Value>>> + Send + Sync,
>;

/// A member as a viewer sees it: the member view and the app's record.
#[derive(Clone, PartialEq, Debug, Serialize)]
pub struct ChannelMember {
    /// The member and its connections.
    #[serde(flatten)]
    pub member: Member,
    /// What the channel's enricher returned for it (`null` without one).
    pub profile: Value,
}

/// What [`Channels::members`] returns.
#[derive(Clone, PartialEq, Debug, Serialize)]
pub struct ChannelMembers {
    /// The channel is count-only: `members` is empty.
    pub count_only: bool,
    /// The counts.
    pub counts: Counts,
    /// The members, in the store's order (empty for a count-only channel).
    pub members: Vec<ChannelMember>,
}

/// What [`Channels::subscribe`] yields: the state first, then diffs. In a
/// count-only channel both carry counts and no members.
#[derive(Clone, PartialEq, Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ChannelUpdate {
    /// The whole list: replace what you hold. Sent first, and again if the
    /// reader fell behind.
    State {
        /// The counts.
        counts: Counts,
        /// Every member.
        members: Vec<ChannelMember>,
    },
    /// A change.
    Diff {
        /// The counts after it.
        counts: Counts,
        /// Members who joined or changed, with their whole view: upsert.
        joins: Vec<ChannelMember>,
        /// Members who are gone: remove.
        leaves: Vec<MemberId>,
    },
}

impl ChannelUpdate {
    /// The counts it carries.
    pub fn counts(&self) -> Counts {
        match self {
            ChannelUpdate::State { counts, .. } | ChannelUpdate::Diff { counts, .. } => *counts,
        }
    }

    /// The same update without identities, for a count-only channel.
    fn counts_only(self) -> Self {
        match self {
            ChannelUpdate::State { counts, .. } => ChannelUpdate::State {
                counts,
                members: Vec::new(),
            },
            ChannelUpdate::Diff { counts, .. } => ChannelUpdate::Diff {
                counts,
                joins: Vec::new(),
                leaves: Vec::new(),
            },
        }
    }
}

/// The updates of one subscriber; see [`Channels::subscribe`].
pub type ChannelUpdates = BoxStream<'static, ChannelUpdate>;

/// The policy layer over a store: the app registers, per topic prefix, a
/// resolver giving each topic's [`ChannelConfig`], and optionally an
/// enricher; the checked calls enforce the config the same way on every
/// backend.
///
/// A topic is handled by the registration with the longest matching
/// prefix; a topic no prefix matches does not exist. Resolved configs
/// (also "does not exist") are cached for [`cache_for`](Self::cache_for)
/// (default 2 minutes, as Discourse does), timed by the store's clock, and
/// a topic's resolver runs once per period however many calls come at once.
///
/// ```
/// # use std::{sync::Arc, time::Duration};
/// # use presence::{Access, ChannelConfig, Channels, Error, Meta, PresenceKey, memory::MemoryStore};
/// # async fn run() -> presence::Result<()> {
/// let channels = Channels::new(Arc::new(MemoryStore::new()))
///     .channel("/staff/", |_topic| async {
///         let staff = Access::only(["alice", "bob"]).ok()?;
///         Some(ChannelConfig { view: staff.clone(), enter: staff, ..ChannelConfig::public() })
///     });
/// let key = PresenceKey::new("/staff/lounge", "alice", "tab")?;
/// channels.join(&key.member, &key, Meta::new()).await?;
///
/// let mallory = "mallory".try_into()?;
/// let hidden = channels.count(&mallory, &key.topic).await.unwrap_err();
/// assert!(matches!(hidden, Error::NotFound { .. })); // as if it did not exist
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Channels {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn PresenceStore>,
    routes: Vec<Arc<Route>>,
    cache_for: Duration,
    configs: Mutex<Pruned<Topic, Arc<tokio::sync::Mutex<Option<Cached>>>>>,
    rooms: Mutex<Pruned<Topic, Weak<Room>>>,
    /// Topics entered through these channels, with their TTL and when they
    /// were last entered, for `sweep_expired`.
    entered: Mutex<HashMap<Topic, (Duration, Timestamp)>>,
    /// How often rooms re-read their topic when the store's events are not
    /// complete (`PresenceStore::events_are_complete`).
    refresh_every: Duration,
    /// The guards made by `track`, closed together by `close`.
    trackers: Arc<Group>,
    /// Cancelled by `close`.
    closing: CancellationToken,
}

#[derive(Clone)]
struct Cached {
    at: Timestamp,
    config: Option<Arc<ChannelConfig>>,
}

struct Route {
    prefix: String,
    resolve: Resolver,
    enrich: Option<Enrichment>,
}

/// An enricher and the records it returned, by member, with when.
struct Enrichment {
    enrich: Enricher,
    records: Mutex<Pruned<MemberId, (Timestamp, Value)>>,
    /// One enrichment at a time per topic, so concurrent readers of a topic
    /// share one call; different topics do not wait for each other.
    turns: Mutex<Pruned<Topic, Arc<tokio::sync::Mutex<()>>>>,
}

/// A map of caches and gates that forgets what is no longer needed once it
/// has doubled since it last did, so pruning costs O(1) per insertion
/// however many entries stay alive.
struct Pruned<K, V> {
    map: HashMap<K, V>,
    prune_at: usize,
}

impl<K, V> Default for Pruned<K, V> {
    fn default() -> Self {
        Self {
            map: HashMap::new(),
            prune_at: 1024,
        }
    }
}

impl<K: std::hash::Hash + Eq, V> Pruned<K, V> {
    /// Before adding entries: drops those `keep` refuses, if it is time.
    fn prune(&mut self, keep: impl FnMut(&K, &mut V) -> bool) {
        if self.map.len() >= self.prune_at {
            self.map.retain(keep);
            self.prune_at = (2 * self.map.len()).max(1024);
        }
    }
}

impl Route {
    /// The same registration with empty caches.
    fn fresh_copy(&self) -> Route {
        Route {
            prefix: self.prefix.clone(),
            resolve: self.resolve.clone(),
            enrich: self
                .enrich
                .as_ref()
                .map(|enrichment| Enrichment::new(enrichment.enrich.clone())),
        }
    }
}

impl Enrichment {
    fn new(enrich: Enricher) -> Self {
        Self {
            enrich,
            records: Mutex::default(),
            turns: Mutex::default(),
        }
    }

    fn turn(&self, topic: &Topic) -> Arc<tokio::sync::Mutex<()>> {
        let mut turns = sync::lock(&self.turns);
        turns.prune(|_, turn| Arc::strong_count(turn) > 1);
        turns.map.entry(topic.clone()).or_default().clone()
    }
}

impl Channels {
    /// No channels yet: every topic is "not found" until registered.
    pub fn new(store: Arc<dyn PresenceStore>) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                routes: Vec::new(),
                cache_for: Duration::from_secs(120),
                configs: Mutex::default(),
                rooms: Mutex::default(),
                entered: Mutex::default(),
                refresh_every: Duration::from_secs(2),
                trackers: Arc::default(),
                closing: CancellationToken::new(),
            }),
        }
    }

    /// The configuration to change. A `Channels` already shared (cloned,
    /// or held by a subscription) is not changed under its other holders:
    /// this handle becomes a new, independent `Channels` with the same
    /// registrations and empty caches.
    fn inner_mut(&mut self) -> &mut Inner {
        if Arc::get_mut(&mut self.inner).is_none() {
            let routes = self
                .inner
                .routes
                .iter()
                .map(|route| Arc::new(route.fresh_copy()))
                .collect();
            self.inner = Arc::new(Inner {
                store: self.inner.store.clone(),
                routes,
                cache_for: self.inner.cache_for,
                configs: Mutex::default(),
                rooms: Mutex::default(),
                entered: Mutex::default(),
                refresh_every: self.inner.refresh_every,
                trackers: Arc::default(),
                closing: CancellationToken::new(),
            });
        }
        Arc::get_mut(&mut self.inner).expect("just made unique")
    }

    /// Registers the resolver for topics starting with `prefix` (replacing
    /// an earlier one for the same prefix, and its enricher).
    ///
    /// Configure first, then share: configuring a clone turns it into a
    /// separate `Channels` (see [`Channels`]).
    pub fn channel<F, Fut>(mut self, prefix: impl Into<String>, resolve: F) -> Self
    where
        F: Fn(Topic) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Option<ChannelConfig>> + Send + 'static,
    {
        let resolve: Resolver = Arc::new(move |topic| Box::pin(resolve(topic)));
        let prefix = prefix.into();
        let routes = &mut self.inner_mut().routes;
        routes.retain(|route| route.prefix != prefix);
        routes.push(Arc::new(Route {
            prefix,
            resolve,
            enrich: None,
        }));
        // Longest prefix first, so the most specific registration wins.
        routes.sort_by_key(|route| std::cmp::Reverse(route.prefix.len()));
        self
    }

    /// Registers the enricher for the channel registered with `prefix`:
    /// [`members`](Self::members) and [`subscribe`](Self::subscribe) attach
    /// its records, asking it once per change for the members it has not
    /// described within [`cache_for`](Self::cache_for), never once per
    /// member or per viewer.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] naming `prefix` when no channel is registered
    /// with exactly that prefix (register the channel first).
    pub fn enrich<F, Fut>(mut self, prefix: &str, enrich: F) -> Result<Self>
    where
        F: Fn(Vec<MemberId>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<HashMap<MemberId, Value>>> + Send + 'static,
    {
        if !self.inner.routes.iter().any(|route| route.prefix == prefix) {
            let known: Vec<&str> = self
                .inner
                .routes
                .iter()
                .map(|r| r.prefix.as_str())
                .collect();
            return Err(Error::invalid(
                "prefix",
                format!(
                    "no channel is registered with prefix {prefix:?} (registered: {known:?}); \
                     call `channel` first"
                ),
            ));
        }
        let enrich: Enricher = Arc::new(move |ids| Box::pin(enrich(ids)));
        let route = self
            .inner_mut()
            .routes
            .iter_mut()
            .find(|route| route.prefix == prefix)
            .expect("checked above");
        *route = Arc::new(Route {
            prefix: route.prefix.clone(),
            resolve: route.resolve.clone(),
            enrich: Some(Enrichment::new(enrich)),
        });
        Ok(self)
    }

    /// How often the shared room behind [`subscribe`](Self::subscribe)
    /// re-reads its topic on a store whose events miss other processes'
    /// changes (a SQLite file several processes write; default 2 s). Stores
    /// whose events are complete are never re-read.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] naming `refresh_every` when it is zero.
    pub fn refresh_every(mut self, every: Duration) -> Result<Self> {
        let every = positive("refresh_every", every)?;
        self.inner_mut().refresh_every = every;
        Ok(self)
    }

    /// On shutdown: makes every [`track`](Self::track) guard leave and waits
    /// for it, ends every [`subscribe`](Self::subscribe) stream and stops
    /// the rooms behind them. Afterwards every call fails with
    /// `Error::Closed`. The store is not closed: close it after this.
    pub async fn close(&self) {
        self.inner.closing.cancel();
        self.inner.trackers.close().await;
        let rooms: Vec<Arc<Room>> = sync::lock(&self.inner.rooms)
            .map
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        for room in rooms {
            room.close().await;
        }
    }

    /// Caches resolved configs and enriched records for `period` instead.
    pub fn cache_for(mut self, period: Duration) -> Self {
        self.inner_mut().cache_for = period;
        self
    }

    /// The store underneath.
    pub fn store(&self) -> &Arc<dyn PresenceStore> {
        &self.inner.store
    }

    /// The config of `topic` for `viewer`: [`Error::NotFound`] when there
    /// is no such channel or the viewer may not see it.
    pub async fn config(&self, viewer: &MemberId, topic: &Topic) -> Result<Arc<ChannelConfig>> {
        let (_, config) = self.visible(viewer, topic).await?;
        Ok(config)
    }

    /// Joins `viewer`'s own connection `key`, if the viewer may see and
    /// enter the channel, within its `max_members`.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] (no such channel, or not visible to the viewer),
    /// [`Error::Forbidden`] (may see but not enter, or `key` is another
    /// member's), [`Error::TopicFull`]; each changes nothing.
    pub async fn join(&self, viewer: &MemberId, key: &PresenceKey, meta: Meta) -> Result<Joined> {
        let config = self.may_enter(viewer, key).await?;
        let joined = match config.max_members {
            Some(max) => self.inner.store.join_limited(key, meta, max).await?,
            None => self.inner.store.join(key, meta).await?,
        };
        self.entered(&key.topic, config.ttl);
        Ok(joined)
    }

    /// As [`join`](Self::join), returning a [`Tracked`] guard that
    /// heartbeats on the channel's TTL, re-joins (within the limit) after a
    /// sweep and leaves when dropped.
    pub async fn track(&self, viewer: &MemberId, key: PresenceKey, meta: Meta) -> Result<Tracked> {
        let config = self.may_enter(viewer, &key).await?;
        let tracker = Tracker::in_group(
            self.inner.store.clone(),
            TrackerConfig::new(config.ttl),
            self.inner.trackers.clone(),
        )
        .map_err(|error| match error {
            Error::InvalidInput { reason, .. } => Error::invalid(
                "ttl",
                format!("the channel config of {:?}: {reason}", key.topic),
            ),
            other => other,
        })?;
        let topic = key.topic.clone();
        let tracked = match config.max_members {
            Some(max) => tracker.track_limited(key, meta, max).await?,
            None => tracker.track(key, meta).await?,
        };
        self.entered(&topic, config.ttl);
        Ok(tracked)
    }

    /// Replaces the meta of `viewer`'s own connection `key` (typing, away),
    /// if the viewer may see and enter the channel; `None` (nothing created)
    /// when the connection is not present.
    ///
    /// # Errors
    ///
    /// As [`join`](Self::join): [`Error::NotFound`], [`Error::Forbidden`];
    /// each changes nothing.
    pub async fn update(
        &self,
        viewer: &MemberId,
        key: &PresenceKey,
        meta: Meta,
    ) -> Result<Option<Entry>> {
        self.may_enter(viewer, key).await?;
        self.inner.store.update(key, meta).await
    }

    /// Removes `viewer`'s own connection `key`. Leaving is always allowed
    /// in a channel the viewer may see.
    pub async fn leave(&self, viewer: &MemberId, key: &PresenceKey) -> Result<Option<Departure>> {
        self.visible(viewer, &key.topic).await?;
        own_key(viewer, key)?;
        self.inner.store.leave(key).await
    }

    /// The channel's members as `viewer` may see them: with the enricher's
    /// records, or only counts in a count-only channel.
    pub async fn members(&self, viewer: &MemberId, topic: &Topic) -> Result<ChannelMembers> {
        let (route, config) = self.visible(viewer, topic).await?;
        let store = &self.inner.store;
        if config.count_only {
            return Ok(ChannelMembers {
                count_only: true,
                counts: store.count(topic).await?,
                members: Vec::new(),
            });
        }
        let members = store.members(topic).await?;
        let counts = Counts {
            members: members.len() as u64,
            connections: members.iter().map(|m| m.connections.len() as u64).sum(),
        };
        let members = self.enriched(&route, members).await?;
        Ok(ChannelMembers {
            count_only: false,
            counts,
            members,
        })
    }

    /// The channel's counts, for any viewer who may see it (count-only
    /// channels included).
    pub async fn count(&self, viewer: &MemberId, topic: &Topic) -> Result<Counts> {
        self.visible(viewer, topic).await?;
        self.inner.store.count(topic).await
    }

    /// The channel's state, then its changes, as `viewer` may see them.
    /// All subscribers of a topic in this process share one
    /// [`LiveMembers`] and one enrichment per change.
    pub async fn subscribe(&self, viewer: &MemberId, topic: &Topic) -> Result<ChannelUpdates> {
        let (route, config) = self.visible(viewer, topic).await?;
        let room = self.room(route, topic).await?;
        let updates = room
            .updates()
            .take_until(self.inner.closing.clone().cancelled_owned());
        Ok(if config.count_only {
            updates.map(ChannelUpdate::counts_only).boxed()
        } else {
            updates.boxed()
        })
    }

    /// Sweeps each topic entered through these channels with its own TTL,
    /// and every other topic with `fallback_ttl`; returns the departures.
    /// Run it where a [`Sweeper`](crate::Sweeper) would run.
    pub async fn sweep_expired(&self, fallback_ttl: Duration) -> Result<Vec<Departure>> {
        let store = &self.inner.store;
        let started = store.clock().now();
        let entered: Vec<(Topic, Duration)> = sync::lock(&self.inner.entered)
            .iter()
            .map(|(topic, (ttl, _))| (topic.clone(), *ttl))
            .collect();
        let mut departures = Vec::new();
        for (topic, ttl) in entered {
            // Topics on the fallback TTL are swept below; empty ones need
            // no sweeping until someone enters again (which re-records it).
            let done = ttl >= fallback_ttl || {
                departures.extend(store.sweep(&topic, store.clock().now() - ttl).await?);
                store.count(&topic).await?.connections == 0
            };
            if done {
                let mut entered = sync::lock(&self.inner.entered);
                // Unless someone entered meanwhile.
                if entered.get(&topic).is_some_and(|(_, at)| *at < started) {
                    entered.remove(&topic);
                }
            }
        }
        departures.extend(store.sweep_all(store.clock().now() - fallback_ttl).await?);
        Ok(departures)
    }

    fn entered(&self, topic: &Topic, ttl: Duration) {
        let now = self.inner.store.clock().now();
        sync::lock(&self.inner.entered).insert(topic.clone(), (ttl, now));
    }

    async fn may_enter(&self, viewer: &MemberId, key: &PresenceKey) -> Result<Arc<ChannelConfig>> {
        let (_, config) = self.visible(viewer, &key.topic).await?;
        own_key(viewer, key)?;
        if !config.enter.allows(viewer) {
            return Err(Error::Forbidden {
                topic: key.topic.clone(),
                reason: format!("{viewer} may not enter"),
            });
        }
        Ok(config)
    }

    /// The route and config of a topic the viewer may see, or `NotFound`.
    async fn visible(
        &self,
        viewer: &MemberId,
        topic: &Topic,
    ) -> Result<(Arc<Route>, Arc<ChannelConfig>)> {
        if self.inner.closing.is_cancelled() {
            return Err(Error::Closed {
                backend: "channels",
            });
        }
        let not_found = || Error::NotFound {
            topic: topic.clone(),
        };
        let route = self
            .inner
            .routes
            .iter()
            .find(|route| topic.as_str().starts_with(&route.prefix))
            .ok_or_else(not_found)?;
        let config = self.resolve(route, topic).await.ok_or_else(not_found)?;
        if !config.view.allows(viewer) {
            return Err(not_found());
        }
        Ok((route.clone(), config))
    }

    /// The topic's config, from the cache or its resolver (once per period,
    /// however many ask at once).
    async fn resolve(&self, route: &Route, topic: &Topic) -> Option<Arc<ChannelConfig>> {
        let now = self.inner.store.clock().now();
        let slot = {
            let mut configs = sync::lock(&self.inner.configs);
            // Keep what is fresh, and what someone is resolving right now.
            configs.prune(|_, slot| {
                slot.try_lock().map_or(true, |cached| {
                    cached
                        .as_ref()
                        .is_some_and(|c| now - self.inner.cache_for < c.at)
                })
            });
            configs.map.entry(topic.clone()).or_default().clone()
        };
        let mut cached = slot.lock().await;
        if let Some(hit) = cached.as_ref()
            && now - self.inner.cache_for < hit.at
        {
            return hit.config.clone();
        }
        let config = (route.resolve)(topic.clone()).await.map(Arc::new);
        *cached = Some(Cached {
            at: now,
            config: config.clone(),
        });
        config
    }

    /// Attaches the route's records to members, enriching the ones not
    /// described within the cache period in one call.
    async fn enriched(&self, route: &Route, members: Vec<Member>) -> Result<Vec<ChannelMember>> {
        let Some(enrichment) = &route.enrich else {
            return Ok(members
                .into_iter()
                .map(|member| ChannelMember {
                    member,
                    profile: Value::Null,
                })
                .collect());
        };
        let Some(topic) = members.first().map(|m| m.topic.clone()) else {
            return Ok(Vec::new());
        };
        let turn = enrichment.turn(&topic);
        let _turn = turn.lock().await;
        let now = self.inner.store.clock().now();
        let fresh_after = now - self.inner.cache_for;
        let missing: Vec<MemberId> = {
            let records = sync::lock(&enrichment.records);
            members
                .iter()
                .filter(|m| {
                    records
                        .map
                        .get(&m.member)
                        .is_none_or(|(at, _)| *at <= fresh_after)
                })
                .map(|m| m.member.clone())
                .collect()
        };
        let mut found = if missing.is_empty() {
            HashMap::new()
        } else {
            (enrichment.enrich)(missing.clone()).await?
        };
        let mut records = sync::lock(&enrichment.records);
        records.prune(|_, (at, _)| *at > fresh_after);
        for id in missing {
            let record = found.remove(&id).unwrap_or(Value::Null);
            records.map.insert(id, (now, record));
        }
        let records = &records.map;
        Ok(members
            .into_iter()
            .map(|member| {
                let profile = records
                    .get(&member.member)
                    .map_or(Value::Null, |(_, record)| record.clone());
                ChannelMember { member, profile }
            })
            .collect())
    }

    /// The topic's shared room, opened if no subscriber holds it.
    async fn room(&self, route: Arc<Route>, topic: &Topic) -> Result<Arc<Room>> {
        if let Some(room) = sync::lock(&self.inner.rooms)
            .map
            .get(topic)
            .and_then(Weak::upgrade)
        {
            return Ok(room);
        }
        let room = Room::open(self.clone(), route, topic.clone()).await?;
        let mut rooms = sync::lock(&self.inner.rooms);
        // Another subscriber may have opened it meanwhile: share theirs.
        if let Some(theirs) = rooms.map.get(topic).and_then(Weak::upgrade) {
            return Ok(theirs);
        }
        rooms.prune(|_, room| room.strong_count() > 0);
        rooms.map.insert(topic.clone(), Arc::downgrade(&room));
        Ok(room)
    }
}

impl std::fmt::Debug for Channels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let prefixes: Vec<&str> = self
            .inner
            .routes
            .iter()
            .map(|r| r.prefix.as_str())
            .collect();
        f.debug_struct("Channels")
            .field("store", &self.inner.store)
            .field("prefixes", &prefixes)
            .field("cache_for", &self.inner.cache_for)
            .finish_non_exhaustive()
    }
}

fn own_key(viewer: &MemberId, key: &PresenceKey) -> Result<()> {
    if &key.member != viewer {
        return Err(Error::Forbidden {
            topic: key.topic.clone(),
            reason: format!("{viewer} may not act as {}", key.member),
        });
    }
    Ok(())
}

/// One topic's shared subscription: a [`LiveMembers`] whose updates are
/// enriched once and broadcast to every subscriber.
struct Room {
    state: RwLock<RoomState>,
    updates: broadcast::Sender<ChannelUpdate>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Room {
    async fn open(channels: Channels, route: Arc<Route>, topic: Topic) -> Result<Arc<Room>> {
        let live = LiveMembers::follow(
            channels.inner.store.clone(),
            topic,
            channels.inner.refresh_every,
        )
        .await?;
        let mut updates = live.updates();
        let room = Arc::new(Room {
            state: RwLock::default(),
            updates: broadcast::channel(256).0,
            task: Mutex::new(None),
        });
        if let Some(first) = updates.next().await {
            room.apply(&channels, &route, first).await?;
        }
        let weak = Arc::downgrade(&room);
        let task = tokio::spawn(async move {
            // Owns the live list; ends when the last subscriber is gone.
            while let Some(update) = updates.next().await {
                let Some(room) = weak.upgrade() else { return };
                let mut update = update;
                let mut backoff = Duration::from_millis(50);
                // A change that could not be enriched is not lost: send the
                // whole list instead, once the enricher answers again.
                while let Err(error) = room.apply(&channels, &route, update).await {
                    tracing::warn!(error = %error.chain(), "enriching a channel update failed; retrying with the whole list");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    update = LiveUpdate::State {
                        members: live.members(),
                        counts: live.counts(),
                    };
                }
            }
        });
        *sync::lock(&room.task) = Some(task);
        Ok(room)
    }

    /// Enriches one update of the live list, applies it and sends it on.
    async fn apply(&self, channels: &Channels, route: &Route, update: LiveUpdate) -> Result<()> {
        match update {
            LiveUpdate::State { members, counts } => {
                let members = channels.enriched(route, members).await?;
                let mut state = sync::write(&self.state);
                state.members = members
                    .iter()
                    .map(|m| (m.member.member.clone(), m.clone()))
                    .collect();
                state.counts = counts;
                let _ = self.updates.send(ChannelUpdate::State { counts, members });
            }
            LiveUpdate::Diff(diff) => {
                let joins = channels.enriched(route, diff.joins).await?;
                let leaves: Vec<MemberId> = diff.leaves.into_iter().map(|m| m.member).collect();
                let mut state = sync::write(&self.state);
                for member in &leaves {
                    state.members.remove(member);
                }
                for join in &joins {
                    state
                        .members
                        .insert(join.member.member.clone(), join.clone());
                }
                state.counts = diff.counts;
                let _ = self.updates.send(ChannelUpdate::Diff {
                    counts: diff.counts,
                    joins,
                    leaves,
                });
            }
        }
        Ok(())
    }

    fn snapshot(&self) -> ChannelUpdate {
        sync::read(&self.state).snapshot()
    }

    /// Stops the room's task (and the live list it owns).
    async fn close(&self) {
        let task = sync::lock(&self.task).take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }

    /// The state now, then every update; a reader that falls behind gets
    /// the state again. Holds the room open.
    fn updates(self: Arc<Self>) -> ChannelUpdates {
        let (first, receiver) = {
            // Under the lock updates are sent under: nothing falls between.
            let state = sync::read(&self.state);
            (state.snapshot(), self.updates.subscribe())
        };
        let room = self.clone();
        let rest = BroadcastStream::new(receiver).map(move |item| match item {
            Ok(update) => update,
            Err(BroadcastStreamRecvError::Lagged(_)) => room.snapshot(),
        });
        futures::stream::once(async move { first })
            .chain(rest)
            .boxed()
    }
}

/// What a room's subscribers hold.
#[derive(Default)]
struct RoomState {
    members: HashMap<MemberId, ChannelMember>,
    counts: Counts,
}

impl RoomState {
    fn snapshot(&self) -> ChannelUpdate {
        let mut members: Vec<ChannelMember> = self.members.values().cloned().collect();
        members.sort_by(|a, b| {
            (a.member.joined_at, &a.member.member).cmp(&(b.member.joined_at, &b.member.member))
        });
        ChannelUpdate::State {
            counts: self.counts,
            members,
        }
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        if let Some(task) = self
            .task
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Pruned;

    #[test]
    fn pruning_waits_for_the_map_to_double() {
        let mut pruned: Pruned<u32, bool> = Pruned::default();
        let mut checks = 0;
        for i in 0..4096 {
            pruned.prune(|_, alive| {
                checks += 1;
                *alive
            });
            // Every other entry is alive.
            pruned.map.insert(i, i % 2 == 0);
        }
        // Scans at 1,024 (keeps 512, next at 1,024 again), then as the map
        // doubles: a linear number of checks in all, not one scan per insert.
        assert!(checks < 3 * 4096, "{checks} checks for 4,096 inserts");
        assert!(pruned.map.len() < 4096);
        assert!(pruned.map.iter().filter(|(_, alive)| !**alive).count() < 1024);
        // Nothing alive is ever dropped.
        for i in (0..4096).step_by(2) {
            assert_eq!(pruned.map.get(&i), Some(&true), "{i}");
        }
    }
}
