//! `RedisStore`: the `PresenceStore` contract in Redis, on one server or a
//! Redis Cluster.

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use async_trait::async_trait;
use futures::StreamExt;
use futures::future::join_all;
use presence_core::{
    Clock, ConnectionId, Counts, Departure, Entry, Error, EventStream, Joined, Member, MemberId,
    Meta, PresenceKey, PresenceStore, Reason, Result, Timestamp, Topic, check_batch, metrics,
};

use crate::batch::Batcher;
use crate::config::{RedisConfig, redact};
use crate::conn::{BACKEND, Target};
use crate::db::{
    Call, Db, IndexChange, JoinRequest, SWEEP_CONCURRENCY, element, load_scripts, random_token,
};
use crate::events::{Events, Settings};
use crate::keys::Keys;
use crate::scripts::SCRIPTS;
use crate::shards::ShardMap;
use crate::wire::{self, Malformed};

/// The Redis store: every per-topic call is one Lua script on the topic's
/// shard; events travel over (sharded) pub/sub, so a subscriber sees the
/// changes of every process. See the crate docs for the data layout.
///
/// Cloning is cheap and clones share the connections.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Db>,
    events: Events,
    joins: Batcher<JoinRequest, Joined>,
    touches: Batcher<(PresenceKey, i64), bool>,
    leaves: Batcher<PresenceKey, Option<Departure>>,
    /// Calls in flight hold it shared; `close` takes it exclusively.
    gate: tokio::sync::RwLock<()>,
    closed: AtomicBool,
}

impl RedisStore {
    /// Connects to the server or cluster `config` names (see
    /// [`RedisConfig::url`]), loads the scripts and starts the events
    /// connection.
    pub async fn connect(config: RedisConfig) -> Result<Self> {
        config.check()?;
        let target = Target::from_config(&config)?;
        Self::start(target, config).await
    }

    /// Uses the app's own client for one server (its URL's settings; the
    /// store speaks RESP3 on its own connections). `config.url` and
    /// `config.nodes` are not used.
    pub async fn from_client(client: redis::Client, config: RedisConfig) -> Result<Self> {
        config.check()?;
        Self::start(
            Target::Single(Box::new(crate::conn::resp3(&client)?)),
            config,
        )
        .await
    }

    async fn start(target: Target, config: RedisConfig) -> Result<Self> {
        let cluster = target.is_cluster();
        let shown = if cluster {
            format!(
                "{:?}",
                config.nodes.iter().map(|n| redact(n)).collect::<Vec<_>>()
            )
        } else {
            redact(&config.url)
        };
        let conn = match target.connect(&config, None).await {
            Ok(conn) => conn,
            Err(error) => {
                tracing::warn!(server = %shown, error = %error.chain(), "connecting to redis failed");
                return Err(error);
            }
        };
        let (push, pushes) = tokio::sync::mpsc::unbounded_channel();
        let events_conn = target.connect(&config, Some(push)).await?;
        load_scripts(&conn, config.command_timeout).await?;
        tracing::info!(server = %shown, cluster, "connected to redis");
        let publish = if cluster { "SPUBLISH" } else { "PUBLISH" };
        let keys = Keys::new(&config.key_prefix);
        let events = Events::start(
            events_conn,
            pushes,
            Settings {
                keys: keys.clone(),
                cluster,
                publish,
                event_buffer: config.event_buffer,
                timeout: config.command_timeout,
            },
        );
        let max = config.max_batch;
        let db = Arc::new(Db {
            config,
            keys,
            cluster,
            publish,
            conn: RwLock::new(Some(conn)),
            shards: ShardMap::default(),
        });
        let joins = {
            let db = db.clone();
            Batcher::start("join", 8, max, move |requests| {
                let db = db.clone();
                async move { db.join_batch(requests).await }
            })
        };
        let touches = {
            let db = db.clone();
            Batcher::start("touch", 2, max, move |keys: Vec<(PresenceKey, i64)>| {
                let db = db.clone();
                async move {
                    let keys: Vec<(&PresenceKey, i64)> =
                        keys.iter().map(|(key, now)| (key, *now)).collect();
                    db.touch_batch(&keys).await
                }
            })
        };
        let leaves = {
            let db = db.clone();
            Batcher::start("leave", 2, max, move |keys: Vec<PresenceKey>| {
                let db = db.clone();
                async move {
                    let results = db.remove_keys(&keys, Reason::Left).await;
                    let departures: Vec<Departure> = results
                        .iter()
                        .filter_map(|r| r.as_ref().ok().cloned().flatten())
                        .collect();
                    metrics::departed(BACKEND, &departures);
                    results
                }
            })
        };
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                events,
                joins,
                touches,
                leaves,
                gate: tokio::sync::RwLock::new(()),
                closed: AtomicBool::new(false),
            }),
        })
    }

    /// The configuration the store was built with.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.db.config
    }

    /// Whether the store runs on a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.inner.db.cluster
    }

    /// Admits a call: `Closed` once `close` began; the guard holds off
    /// `close` until the call is done.
    async fn enter(&self) -> Result<tokio::sync::RwLockReadGuard<'_, ()>> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed { backend: BACKEND });
        }
        let guard = self.inner.gate.read().await;
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed { backend: BACKEND });
        }
        Ok(guard)
    }

    fn db(&self) -> &Db {
        &self.inner.db
    }

    async fn join_inner(
        &self,
        key: &PresenceKey,
        meta: Meta,
        max_members: Option<u32>,
    ) -> Result<Joined> {
        meta.check_size(self.db().config.max_meta_bytes)?;
        let _call = self.enter().await?;
        let request = JoinRequest {
            key: key.clone(),
            meta,
            now: self.db().now(),
            max_members,
            token: random_token(),
        };
        self.inner.joins.call(request).await
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("config", &self.inner.db.config)
            .field("cluster", &self.inner.db.cluster)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl PresenceStore for RedisStore {
    async fn join(&self, key: &PresenceKey, meta: Meta) -> Result<Joined> {
        self.join_inner(key, meta, None).await
    }

    async fn join_limited(
        &self,
        key: &PresenceKey,
        meta: Meta,
        max_members: u32,
    ) -> Result<Joined> {
        self.join_inner(key, meta, Some(max_members)).await
    }

    async fn update(&self, key: &PresenceKey, meta: Meta) -> Result<Option<Entry>> {
        meta.check_size(self.db().config.max_meta_bytes)?;
        let _call = self.enter().await?;
        let db = self.db();
        let now = db.now();
        let mut call = Call::default();
        call.keys.extend(db.keys.topic(&key.topic));
        call.arg(db.publish)
            .arg(&key.topic)
            .arg(&key.member)
            .arg(&key.connection)
            .arg(meta.to_json())
            .arg(now);
        let answer = db.run("update", &SCRIPTS.update, call).await?;
        let Some(joined_at) = wire::int(&answer) else {
            return Ok(None);
        };
        Ok(Some(Entry {
            key: key.clone(),
            meta,
            joined_at: Timestamp::from_millis(joined_at),
            last_seen_at: Timestamp::from_millis(now),
        }))
    }

    async fn touch(&self, key: &PresenceKey) -> Result<bool> {
        let _call = self.enter().await?;
        let present = self
            .inner
            .touches
            .call((key.clone(), self.db().now()))
            .await?;
        metrics::touched(BACKEND, 1, usize::from(!present));
        Ok(present)
    }

    async fn touch_many(&self, keys: &[PresenceKey]) -> Result<Vec<PresenceKey>> {
        check_batch(keys)?;
        let _call = self.enter().await?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let now = self.db().now();
        let stamped: Vec<(&PresenceKey, i64)> = keys.iter().map(|k| (k, now)).collect();
        let mut absent = Vec::new();
        let mut seen = HashSet::new();
        for (key, present) in keys.iter().zip(self.db().touch_batch(&stamped).await) {
            if !present? && seen.insert(key) {
                absent.push(key.clone());
            }
        }
        metrics::touched(BACKEND, keys.len(), absent.len());
        Ok(absent)
    }

    async fn leave(&self, key: &PresenceKey) -> Result<Option<Departure>> {
        let _call = self.enter().await?;
        self.inner.leaves.call(key.clone()).await
    }

    async fn leave_member(&self, topic: &Topic, member: &MemberId) -> Result<Vec<Departure>> {
        let _call = self.enter().await?;
        let db = self.db();
        let mut call = Call::default();
        call.keys.extend(db.keys.topic(topic));
        call.arg(db.publish).arg(topic).arg(member);
        let answer = wire::array(db.run("leave_member", &SCRIPTS.leave_member, call).await?);
        let removed = wire::removal_answer(&answer, std::slice::from_ref(topic))
            .ok_or_else(|| Error::backend(BACKEND, Malformed("leave_member")))?;
        Ok(db.finish_removal(removed).await)
    }

    async fn disconnect(
        &self,
        member: &MemberId,
        connection: &ConnectionId,
    ) -> Result<Vec<Departure>> {
        let _call = self.enter().await?;
        let db = self.db();
        let found: Vec<(Topic, u64)> = db
            .member_index(member)
            .await?
            .into_iter()
            .filter(|(c, _, _)| c == connection)
            .map(|(_, topic, token)| (topic, token))
            .collect();
        if found.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<PresenceKey> = found
            .iter()
            .map(|(topic, _)| PresenceKey {
                topic: topic.clone(),
                member: member.clone(),
                connection: connection.clone(),
            })
            .collect();
        let results = db.remove_keys(&keys, Reason::Disconnected).await;
        // Elements whose entry was already gone are stale: remove them
        // (only while they still carry the token read above).
        let mut stale = Vec::new();
        let mut departures = Vec::new();
        let mut failure = None;
        for ((topic, token), result) in found.iter().zip(results) {
            match result {
                Ok(Some(departure)) => departures.push(departure),
                Ok(None) => stale.push((member.clone(), element(connection, topic), *token)),
                Err(error) => failure = Some(error),
            }
        }
        db.unindex(stale).await;
        if let Some(error) = failure
            && departures.is_empty()
        {
            return Err(error);
        }
        departures.sort_by(|a, b| a.entry.key.cmp(&b.entry.key));
        metrics::departed(BACKEND, &departures);
        Ok(departures)
    }

    async fn members(&self, topic: &Topic) -> Result<Vec<Member>> {
        let _call = self.enter().await?;
        let db = self.db();
        let keys = db.keys.topic(topic);
        let mut call = Call::default();
        call.keys.extend([keys[0].clone(), keys[1].clone()]);
        let triples = wire::array(db.run("members", &SCRIPTS.members, call).await?);
        Ok(Member::group(wire::entry_triples(topic, triples)))
    }

    async fn member(&self, topic: &Topic, member: &MemberId) -> Result<Option<Member>> {
        let _call = self.enter().await?;
        let db = self.db();
        let keys = db.keys.topic(topic);
        let mut call = Call::default();
        call.keys.extend([keys[0].clone(), keys[1].clone()]);
        call.arg(member);
        let triples = wire::array(db.run("member", &SCRIPTS.member, call).await?);
        Ok(Member::group(wire::entry_triples(topic, triples)).pop())
    }

    async fn count(&self, topic: &Topic) -> Result<Counts> {
        let _call = self.enter().await?;
        let db = self.db();
        let keys = db.keys.topic(topic);
        let mut call = Call::default();
        call.keys.extend([keys[0].clone(), keys[1].clone()]);
        let counts = wire::array(db.run("count", &SCRIPTS.count, call).await?);
        match counts.as_slice() {
            [members, connections] => Ok(Counts {
                members: wire::int(members).unwrap_or(0).max(0) as u64,
                connections: wire::int(connections).unwrap_or(0).max(0) as u64,
            }),
            _ => Err(Error::backend(BACKEND, Malformed("count"))),
        }
    }

    async fn sweep(&self, topic: &Topic, older_than: Timestamp) -> Result<Vec<Departure>> {
        let _call = self.enter().await?;
        let db = self.db();
        let (removed, swept) = db.sweep_topic(topic, older_than.as_millis()).await;
        let departures = db.finish_removal(removed).await;
        swept.map(|()| departures)
    }

    async fn sweep_all(&self, older_than: Timestamp) -> Result<Vec<Departure>> {
        let _call = self.enter().await?;
        let started = Instant::now();
        let db = self.db();
        let older = older_than.as_millis();
        let topics = db.due_topics(older).await?;
        let visited = topics.len();
        let mut sweeps = futures::stream::iter(
            topics
                .into_iter()
                .map(|topic| async move { db.sweep_topic(&topic, older).await }),
        )
        .buffer_unordered(SWEEP_CONCURRENCY);
        let mut removed = Vec::new();
        let mut failure = None;
        while let Some((swept, done)) = sweeps.next().await {
            removed.extend(swept);
            if let Err(error) = done {
                failure = Some(error);
            }
        }
        // The second step once for the whole call: index elements grouped
        // per member, whatever topics they name.
        let departures = db.finish_removal(removed).await;
        if let Some(error) = failure {
            // What was swept stays swept (and was published); the caller
            // learns the sweep is incomplete and sweeps again.
            return Err(error);
        }
        metrics::sweep(BACKEND, started.elapsed());
        tracing::debug!(
            topics = visited,
            departures = departures.len(),
            took_ms = started.elapsed().as_millis() as u64,
            "redis sweep_all"
        );
        Ok(departures)
    }

    async fn topics_of(&self, member: &MemberId) -> Result<Vec<Topic>> {
        let _call = self.enter().await?;
        let db = self.db();
        let elements = db.member_index(member).await?;
        // Check each element against its topic: the index may hold elements
        // of entries already removed (a removal's second step that failed or
        // never ran).
        let checks = elements.iter().map(|(_, topic, _)| {
            let mut cmd = redis::cmd("HGET");
            cmd.arg(&db.keys.topic(topic)[0]).arg(member.as_str());
            db.command("checking a member index", cmd)
        });
        let mut topics = Vec::new();
        let mut stale = Vec::new();
        let mut repoint = Vec::new();
        for ((connection, topic, token), value) in elements.iter().zip(join_all(checks).await) {
            let value = value?;
            let record = wire::bytes(&value).and_then(|v| wire::record_of(v, connection));
            match record {
                None => stale.push((member.clone(), element(connection, topic), *token)),
                Some(record) => {
                    let stored = wire::stored_value(record).1;
                    if stored != 0 && stored != *token {
                        repoint.push(IndexChange {
                            member: member.clone(),
                            element: element(connection, topic),
                            expected: Some(*token),
                            token: stored,
                        });
                    }
                    topics.push(topic.clone());
                }
            }
        }
        db.unindex(stale).await;
        if !repoint.is_empty() {
            db.change_index(repoint).await;
        }
        topics.sort();
        topics.dedup();
        Ok(topics)
    }

    async fn subscribe(&self, topic: &Topic) -> Result<EventStream> {
        let _call = self.enter().await?;
        self.inner
            .events
            .subscribe(topic, self.db().timeout())
            .await
    }

    fn clock(&self) -> Arc<dyn Clock> {
        self.db().config.clock.clone()
    }

    fn max_meta_bytes(&self) -> usize {
        self.db().config.max_meta_bytes
    }

    fn events_are_complete(&self) -> bool {
        // Every process's changes are published by the scripts that make them.
        true
    }

    async fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        // Wait for the calls in flight (queued batch calls included).
        let _closing = self.inner.gate.write().await;
        self.inner.joins.close().await;
        self.inner.touches.close().await;
        self.inner.leaves.close().await;
        let conn = self
            .db()
            .conn
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        self.inner.events.close(conn).await;
        tracing::debug!("redis store closed");
        Ok(())
    }
}

#[cfg(feature = "testing")]
impl RedisStore {
    /// The store's command connection, for tests that write behind its back.
    pub(crate) fn raw_connection(&self) -> Result<crate::conn::Conn> {
        self.db().conn()
    }

    /// The store's key names.
    pub(crate) fn raw_keys(&self) -> &Keys {
        &self.db().keys
    }
}
