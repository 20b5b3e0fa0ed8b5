//! `Tracker`: a joined presence that keeps itself alive and leaves when dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use presence_core::{Departure, Entry, Error, Joined, Meta, PresenceKey, PresenceStore, Result};
use tokio::sync::{Mutex, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The name `Error::Closed` gives for a closed tracker.
const CLOSED: Error = Error::Closed { backend: "tracker" };

/// How a [`Tracker`] keeps its entries alive.
#[derive(Clone, Debug)]
pub struct TrackerConfig {
    /// How long an entry lives without a heartbeat: the TTL the sweeper
    /// removes entries after.
    pub ttl: Duration,
    /// Heartbeats per TTL: a guard touches its entry every
    /// `ttl / heartbeats_per_ttl` (at least 1; default 3, so two heartbeats
    /// can be lost before the entry expires).
    pub heartbeats_per_ttl: u32,
    /// Each interval is shortened by a random fraction of up to `jitter`
    /// (at least 0, below 1; default 0.2), so guards made together do not
    /// heartbeat together, and no interval is ever longer than the nominal
    /// one.
    pub jitter: f64,
}

impl TrackerConfig {
    /// The defaults for a TTL: three heartbeats per TTL, 20% jitter.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            heartbeats_per_ttl: 3,
            jitter: 0.2,
        }
    }

    /// The nominal time between heartbeats.
    pub fn interval(&self) -> Duration {
        self.ttl / self.heartbeats_per_ttl.max(1)
    }

    /// Checks every setting, naming the one that is wrong.
    pub fn check(&self) -> Result<()> {
        if self.ttl.is_zero() {
            return Err(Error::invalid("ttl", "must be longer than 0"));
        }
        if self.heartbeats_per_ttl == 0 {
            return Err(Error::invalid("heartbeats_per_ttl", "must be at least 1"));
        }
        if self.interval() < Duration::from_millis(1) {
            return Err(Error::invalid(
                "heartbeats_per_ttl",
                format!(
                    "{} heartbeats in a ttl of {:?} are less than 1 ms apart",
                    self.heartbeats_per_ttl, self.ttl
                ),
            ));
        }
        if !(0.0..1.0).contains(&self.jitter) {
            return Err(Error::invalid(
                "jitter",
                format!("must be at least 0 and below 1, got {}", self.jitter),
            ));
        }
        Ok(())
    }

    /// One interval, jittered (never zero: `check` keeps jitter below 1).
    fn next_interval(&self) -> Duration {
        self.interval().mul_f64(1.0 - self.jitter * fastrand::f64())
    }
}

/// Joins entries and keeps them alive: each [`track`](Tracker::track)
/// returns a [`Tracked`] guard whose task heartbeats the entry, re-joins it
/// if a sweeper removed it, and leaves when the guard is dropped.
///
/// ```
/// # use std::{sync::Arc, time::Duration};
/// # use presence::{Meta, PresenceKey, PresenceStore, Tracker, memory::MemoryStore};
/// # async fn run() -> presence::Result<()> {
/// let store: Arc<dyn PresenceStore> = Arc::new(MemoryStore::new());
/// let tracker = Tracker::new(store.clone(), Duration::from_secs(30))?;
/// let tab = tracker.track(PresenceKey::new("doc:7", "alice", "tab-1")?, Meta::new()).await?;
/// assert_eq!(store.count(&tab.key().topic).await?.members, 1);
/// drop(tab); // leaves in the background
/// tracker.close().await; // on shutdown: waits for that leave
/// assert_eq!(store.count(&"doc:7".try_into()?).await?.members, 0);
/// # Ok(()) }
/// ```
///
/// Clones share their guards: [`close`](Tracker::close) on any of them
/// leaves every entry still tracked and waits for it.
#[derive(Clone, Debug)]
pub struct Tracker {
    store: Arc<dyn PresenceStore>,
    config: TrackerConfig,
    group: Arc<Group>,
}

/// The guards of one tracker (or of one `Channels`), so they can be closed
/// together.
#[derive(Debug, Default)]
pub(crate) struct Group {
    tasks: TaskTracker,
    closing: CancellationToken,
}

impl Group {
    /// Makes every guard leave (unless abandoned) and waits for them all.
    pub(crate) async fn close(&self) {
        self.closing.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

impl Tracker {
    /// A tracker whose entries live `ttl` without a heartbeat.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] naming `ttl` when it is zero.
    pub fn new(store: Arc<dyn PresenceStore>, ttl: Duration) -> Result<Self> {
        Self::with_config(store, TrackerConfig::new(ttl))
    }

    /// A tracker with every setting chosen.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] naming the setting that is wrong (see
    /// [`TrackerConfig::check`]).
    pub fn with_config(store: Arc<dyn PresenceStore>, config: TrackerConfig) -> Result<Self> {
        Self::in_group(store, config, Arc::default())
    }

    /// A tracker whose guards belong to `group`.
    pub(crate) fn in_group(
        store: Arc<dyn PresenceStore>,
        config: TrackerConfig,
        group: Arc<Group>,
    ) -> Result<Self> {
        config.check()?;
        Ok(Self {
            store,
            config,
            group,
        })
    }

    /// On shutdown: stops every guard's heartbeats, leaves every entry
    /// still tracked (the guards alive and those dropped whose leave is
    /// still on its way; not the abandoned ones), and returns once all of
    /// it is done. Afterwards `track` fails with `Error::Closed`.
    pub async fn close(&self) {
        self.group.close().await;
    }

    /// The store entries are tracked in.
    pub fn store(&self) -> &Arc<dyn PresenceStore> {
        &self.store
    }

    /// The settings.
    pub fn config(&self) -> &TrackerConfig {
        &self.config
    }

    /// Joins `key` with `meta` and keeps it alive until the guard is dropped.
    ///
    /// Must be called within a tokio runtime (the heartbeat is a task).
    pub async fn track(&self, key: PresenceKey, meta: Meta) -> Result<Tracked> {
        self.start(key, meta, None).await
    }

    /// As [`track`](Self::track), with the join (and every re-join) made with
    /// [`join_limited`](PresenceStore::join_limited): fails with
    /// [`Error::TopicFull`](presence_core::Error::TopicFull) when the topic
    /// holds `max_members` other members.
    pub async fn track_limited(
        &self,
        key: PresenceKey,
        meta: Meta,
        max_members: u32,
    ) -> Result<Tracked> {
        self.start(key, meta, Some(max_members)).await
    }

    async fn start(&self, key: PresenceKey, meta: Meta, limit: Option<u32>) -> Result<Tracked> {
        if self.group.closing.is_cancelled() {
            return Err(CLOSED);
        }
        let shared = Arc::new(Shared {
            store: self.store.clone(),
            key,
            limit,
            meta: Mutex::new(Slot { meta, left: false }),
            abandoned: AtomicBool::new(false),
            rejoins: AtomicU64::new(0),
        });
        let joined = {
            let slot = shared.meta.lock().await;
            shared.join(slot.meta.clone()).await?
        };
        let (stop, stopped) = oneshot::channel();
        self.group.tasks.spawn(keep_alive(
            shared.clone(),
            self.config.clone(),
            stopped,
            self.group.closing.clone(),
        ));
        Ok(Tracked {
            shared,
            joined,
            _stop: stop,
        })
    }
}

/// What the guard and its task share. The meta lock also orders every write
/// the guard makes, so a heartbeat's re-join never races a leave.
#[derive(Debug)]
struct Shared {
    store: Arc<dyn PresenceStore>,
    key: PresenceKey,
    limit: Option<u32>,
    meta: Mutex<Slot>,
    abandoned: AtomicBool,
    rejoins: AtomicU64,
}

#[derive(Debug)]
struct Slot {
    meta: Meta,
    left: bool,
}

impl Shared {
    async fn join(&self, meta: Meta) -> Result<Joined> {
        match self.limit {
            Some(max) => self.store.join_limited(&self.key, meta, max).await,
            None => self.store.join(&self.key, meta).await,
        }
    }

    async fn heartbeat(&self) -> Result<Heartbeat> {
        let slot = self.meta.lock().await;
        if slot.left {
            return Ok(Heartbeat::Left);
        }
        if self.store.touch(&self.key).await? {
            return Ok(Heartbeat::Touched);
        }
        let joined = self.join(slot.meta.clone()).await?;
        self.rejoins.fetch_add(1, Ordering::Relaxed);
        Ok(Heartbeat::Rejoined(joined))
    }

    async fn leave(&self) -> Result<Option<Departure>> {
        let mut slot = self.meta.lock().await;
        if slot.left {
            return Ok(None);
        }
        slot.left = true;
        self.store.leave(&self.key).await
    }
}

/// The heartbeat task: touches on every interval until the guard goes or
/// its tracker closes, then leaves (unless the guard was abandoned).
async fn keep_alive(
    shared: Arc<Shared>,
    config: TrackerConfig,
    mut stopped: oneshot::Receiver<()>,
    closing: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            () = closing.cancelled() => break,
            () = tokio::time::sleep(config.next_interval()) => {
                match shared.heartbeat().await {
                    Ok(Heartbeat::Left) => return,
                    Ok(_) => {}
                    Err(Error::Closed { .. }) => return,
                    Err(error) => tracing::warn!(key = %shared.key, error = %error.chain(), "presence heartbeat failed; retrying next interval"),
                }
            }
        }
    }
    if shared.abandoned.load(Ordering::Acquire) {
        return;
    }
    if let Err(error) = shared.leave().await {
        tracing::warn!(key = %shared.key, error = %error.chain(), "presence leave of a dropped guard failed; the sweeper will remove the entry");
    }
}

/// What one heartbeat did.
#[derive(Clone, Debug, PartialEq)]
pub enum Heartbeat {
    /// The entry was there and is refreshed.
    Touched,
    /// The entry was gone (swept); it was joined again with the guard's meta.
    Rejoined(Joined),
    /// The guard has left; nothing was done.
    Left,
}

/// A tracked entry: heartbeated by a background task until dropped, then
/// left. Returned by [`Tracker::track`].
#[derive(Debug)]
pub struct Tracked {
    shared: Arc<Shared>,
    joined: Joined,
    /// Dropping it stops the task, which then leaves.
    _stop: oneshot::Sender<()>,
}

impl Tracked {
    /// The tracked key.
    pub fn key(&self) -> &PresenceKey {
        &self.shared.key
    }

    /// What the first join did.
    pub fn joined(&self) -> &Joined {
        &self.joined
    }

    /// How many times a heartbeat found the entry gone and joined it again.
    pub fn rejoins(&self) -> u64 {
        self.shared.rejoins.load(Ordering::Relaxed)
    }

    /// The meta the entry is (re-)joined with.
    pub async fn meta(&self) -> Meta {
        self.shared.meta.lock().await.meta.clone()
    }

    /// Heartbeats now, without waiting for the interval: touches the entry,
    /// or joins it again if it was swept.
    pub async fn heartbeat(&self) -> Result<Heartbeat> {
        self.shared.heartbeat().await
    }

    /// Replaces the entry's meta (joining it again if it was swept); later
    /// re-joins use the new meta. Emits `Update` (or `Join` after a sweep).
    ///
    /// Fails with `Error::Closed` once the tracker was closed (the entry
    /// has left).
    pub async fn update(&self, meta: Meta) -> Result<Entry> {
        let mut slot = self.shared.meta.lock().await;
        if slot.left {
            return Err(CLOSED);
        }
        let entry = match self
            .shared
            .store
            .update(&self.shared.key, meta.clone())
            .await?
        {
            Some(entry) => entry,
            None => {
                let joined = self.shared.join(meta.clone()).await?;
                self.shared.rejoins.fetch_add(1, Ordering::Relaxed);
                joined.entry
            }
        };
        slot.meta = meta;
        Ok(entry)
    }

    /// Leaves now and stops heartbeating, returning the departure (`None`
    /// if the entry was already gone).
    pub async fn leave(self) -> Result<Option<Departure>> {
        self.shared.leave().await
    }

    /// Stops heartbeating without leaving: the entry stays until a sweeper
    /// removes it, as if the client had crashed. For handing an entry over
    /// to another process, and for simulations.
    pub fn abandon(self) {
        self.shared.abandoned.store(true, Ordering::Release);
    }
}
