//! Opening each backend for the helper and channel tests, and a macro that
//! runs a test on every backend (Postgres when a server is available; CI
//! requires one).

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
pub use conformance::{Backend, Setup};
use presence::postgres::{PostgresStore, testing};
use presence::sqlite::{SqliteConfig, SqliteStore};
use presence::{
    Clock, ConnectionId, Counts, Departure, Entry, EventStream, Joined, Member, MemberId, Meta,
    PresenceKey, PresenceStore, Result, Timestamp, Topic,
};

/// The memory store.
pub struct Memory;

#[async_trait]
impl Backend for Memory {
    async fn open(&self, setup: &Setup) -> Arc<dyn PresenceStore> {
        Arc::new(presence::memory::MemoryStore::with_config(
            presence::memory::MemoryConfig {
                max_meta_bytes: setup.max_meta_bytes,
                event_buffer: setup.event_buffer,
                clock: Arc::new(setup.clock.clone()),
                ..Default::default()
            },
        ))
    }
}

/// A SQLite file in a temporary directory per store.
pub struct Sqlite;

#[async_trait]
impl Backend for Sqlite {
    async fn open(&self, setup: &Setup) -> Arc<dyn PresenceStore> {
        // The directory lives as long as the test process; files are small.
        let dir = tempfile::tempdir().expect("a temporary directory").keep();
        let mut config = SqliteConfig::file(dir.join("presence.db"));
        config.max_meta_bytes = setup.max_meta_bytes;
        config.event_buffer = setup.event_buffer;
        config.clock = Arc::new(setup.clock.clone());
        Arc::new(
            SqliteStore::open(config)
                .await
                .expect("open a SQLite store"),
        )
    }
}

/// A schema of its own on the test server.
pub struct Postgres;

#[async_trait]
impl Backend for Postgres {
    async fn open(&self, setup: &Setup) -> Arc<dyn PresenceStore> {
        let mut config = testing::store_config("helpers");
        config.max_meta_bytes = setup.max_meta_bytes;
        config.event_buffer = setup.event_buffer;
        config.clock = Arc::new(setup.clock.clone());
        Arc::new(
            PostgresStore::connect(config)
                .await
                .expect("connect to the test server"),
        )
    }

    fn unavailable(&self) -> Option<String> {
        testing::unavailable()
    }
}

/// A key prefix of its own on the Redis test server.
pub struct Redis;

#[async_trait]
impl Backend for Redis {
    async fn open(&self, setup: &Setup) -> Arc<dyn PresenceStore> {
        let mut config = presence::redis::testing::store_config("helpers");
        config.max_meta_bytes = setup.max_meta_bytes;
        config.event_buffer = setup.event_buffer;
        config.clock = Arc::new(setup.clock.clone());
        Arc::new(
            presence::redis::RedisStore::connect(config)
                .await
                .expect("connect to the Redis test server"),
        )
    }

    fn unavailable(&self) -> Option<String> {
        presence::redis::testing::unavailable()
    }
}

/// Runs `$test(&dyn Backend)` as one `#[test]` per backend, in modules
/// `memory`, `sqlite`, `postgres` and `redis`.
#[macro_export]
macro_rules! on_every_backend {
    ($($test:ident),* $(,)?) => {
        $crate::on_every_backend!(@backend memory, $crate::support::Memory; $($test),*);
        $crate::on_every_backend!(@backend sqlite, $crate::support::Sqlite; $($test),*);
        $crate::on_every_backend!(@backend postgres, $crate::support::Postgres; $($test),*);
        $crate::on_every_backend!(@backend redis, $crate::support::Redis; $($test),*);
    };
    (@backend $module:ident, $backend:expr; $($test:ident),*) => {
        mod $module {
            $(
                #[test]
                fn $test() {
                    let backend = $backend;
                    if let Some(why) = conformance::Backend::unavailable(&backend) {
                        eprintln!("SKIPPED {}: {why}", stringify!($test));
                        return;
                    }
                    conformance::run(super::$test(&backend));
                }
            )*
        }
    };
}

/// Counts the heartbeat calls that reach a store, passing everything on.
#[derive(Debug)]
pub struct Counted {
    pub inner: Arc<dyn PresenceStore>,
    pub touches: AtomicU64,
    pub touch_many_calls: AtomicU64,
    pub touch_many_keys: AtomicU64,
    /// `touch_many` of fewer keys than this fails (0: never).
    pub fail_batches_under: AtomicU64,
}

impl Counted {
    pub fn new(inner: Arc<dyn PresenceStore>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            touches: AtomicU64::new(0),
            touch_many_calls: AtomicU64::new(0),
            touch_many_keys: AtomicU64::new(0),
            fail_batches_under: AtomicU64::new(0),
        })
    }

    pub fn touch_many_calls(&self) -> u64 {
        self.touch_many_calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl PresenceStore for Counted {
    async fn join(&self, key: &PresenceKey, meta: Meta) -> Result<Joined> {
        self.inner.join(key, meta).await
    }
    async fn join_limited(&self, key: &PresenceKey, meta: Meta, max: u32) -> Result<Joined> {
        self.inner.join_limited(key, meta, max).await
    }
    async fn update(&self, key: &PresenceKey, meta: Meta) -> Result<Option<Entry>> {
        self.inner.update(key, meta).await
    }
    async fn touch(&self, key: &PresenceKey) -> Result<bool> {
        self.touches.fetch_add(1, Ordering::SeqCst);
        self.inner.touch(key).await
    }
    async fn touch_many(&self, keys: &[PresenceKey]) -> Result<Vec<PresenceKey>> {
        self.touch_many_calls.fetch_add(1, Ordering::SeqCst);
        if (keys.len() as u64) < self.fail_batches_under.load(Ordering::SeqCst) {
            return Err(presence::Error::backend("test", "injected failure"));
        }
        self.touch_many_keys
            .fetch_add(keys.len() as u64, Ordering::SeqCst);
        self.inner.touch_many(keys).await
    }
    async fn leave(&self, key: &PresenceKey) -> Result<Option<Departure>> {
        self.inner.leave(key).await
    }
    async fn leave_member(&self, topic: &Topic, member: &MemberId) -> Result<Vec<Departure>> {
        self.inner.leave_member(topic, member).await
    }
    async fn disconnect(&self, m: &MemberId, c: &ConnectionId) -> Result<Vec<Departure>> {
        self.inner.disconnect(m, c).await
    }
    async fn members(&self, topic: &Topic) -> Result<Vec<Member>> {
        self.inner.members(topic).await
    }
    async fn member(&self, topic: &Topic, member: &MemberId) -> Result<Option<Member>> {
        self.inner.member(topic, member).await
    }
    async fn count(&self, topic: &Topic) -> Result<Counts> {
        self.inner.count(topic).await
    }
    async fn sweep(&self, topic: &Topic, older_than: Timestamp) -> Result<Vec<Departure>> {
        self.inner.sweep(topic, older_than).await
    }
    async fn sweep_all(&self, older_than: Timestamp) -> Result<Vec<Departure>> {
        self.inner.sweep_all(older_than).await
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
        self.inner.close().await
    }
}

/// Waits (up to 10 s) until `check` holds, polling; panics with `what`
/// otherwise. A liveness bound for background tasks, not a timing test.
pub async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_within(std::time::Duration::from_secs(10), what, check).await
}

/// [`eventually`] with a bound of `limit`.
pub async fn eventually_within<F, Fut>(limit: std::time::Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
