//! `SqliteStore`: the `PresenceStore` contract on one SQLite database.

use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use deadpool_sqlite::{Hook, HookError, Runtime};
use presence_core::{
    Clock, ConnectionId, Counts, Departure, Entry, EventStream, Joined, Member, MemberId, Meta,
    PresenceKey, PresenceStore, Result, Timestamp, Topic, TopicBroadcast, check_batch,
};
use rusqlite::Connection;

use crate::checkpoint::Checkpointer;
use crate::config::{Location, SqliteConfig};
use crate::error::SqliteError;
use crate::schema::{SCHEMA_VERSION, open_and_migrate};
use crate::sql::{self, Sql};
use crate::writer::{Writer, WriterStats};

/// The SQLite store. Writes go to one writer thread that commits every call
/// waiting at that moment as one transaction; reads run on a pool of read
/// connections (WAL lets them proceed while the writer writes).
///
/// Cloning is cheap and clones share the writer, the readers and the events.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// The runtime the store was opened on: the read pool closes its
    /// connections on it, also when the store is dropped outside it.
    runtime: tokio::runtime::Handle,
    config: SqliteConfig,
    sql: Arc<Sql>,
    writer: Writer,
    readers: Readers,
    channels: Arc<Mutex<TopicBroadcast>>,
    closed: std::sync::atomic::AtomicBool,
}

enum Readers {
    Pool(deadpool_sqlite::Pool),
    /// An in-memory database has one connection: the writer's.
    Writer,
}

impl SqliteStore {
    /// Opens (creating if needed, upgrading if older) the database `config`
    /// names. Fails with a clear `Error::Backend` for a file that is not a
    /// SQLite database or whose schema is newer than this code.
    pub async fn open(config: SqliteConfig) -> Result<Self> {
        let prefix = config.checked_prefix()?.to_owned();
        let location = config.location.clone();
        let busy_timeout = config.busy_timeout;
        let checkpoint_pages = config.checkpoint_pages;
        let background = config.background_checkpoints;
        let (conn, checkpointer) = tokio::task::spawn_blocking(move || {
            let conn = open_and_migrate(&location, &prefix, SCHEMA_VERSION, busy_timeout)?;
            let checkpointer = match &location {
                Location::File(path) if background => {
                    let other = Connection::open(path).map_err(SqliteError::from)?;
                    other
                        .busy_timeout(busy_timeout)
                        .map_err(SqliteError::from)?;
                    Some(
                        Checkpointer::spawn(&conn, other, checkpoint_pages)
                            .map_err(|e| SqliteError::Pool(e.to_string()))?,
                    )
                }
                // Only the writer writes, so only its checkpoints matter;
                // SQLite's own run inside the commit that crosses the line.
                _ => {
                    conn.pragma_update(None, "wal_autocheckpoint", checkpoint_pages)
                        .map_err(SqliteError::from)?;
                    None
                }
            };
            Ok::<_, presence_core::Error>((conn, checkpointer))
        })
        .await
        .map_err(|e| SqliteError::Pool(e.to_string()))??;

        let sql = Arc::new(Sql::new(config.checked_prefix()?));
        let channels = Arc::new(Mutex::new(TopicBroadcast::new(
            "sqlite",
            config.event_buffer,
        )));
        let writer = Writer::spawn(
            conn,
            sql.clone(),
            channels.clone(),
            config.max_group,
            checkpointer,
        )
        .map_err(|e| SqliteError::Pool(e.to_string()))?;
        let readers = match &config.location {
            Location::Memory => Readers::Writer,
            Location::File(path) => Readers::Pool(read_pool(path, &config)?),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                runtime: tokio::runtime::Handle::current(),
                config,
                sql,
                writer,
                readers,
                channels,
                closed: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }

    /// What the writer has done so far: how many calls it ran in how many
    /// commits, and the checkpoints run beside it.
    pub fn writer_stats(&self) -> WriterStats {
        self.inner.writer.stats()
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &SqliteConfig {
        &self.inner.config
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(presence_core::Error::Closed { backend: "sqlite" });
        }
        Ok(())
    }

    async fn write<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection, &Sql, i64) -> Result<(T, Vec<presence_core::Event>)>
        + Send
        + 'static,
    ) -> Result<T> {
        self.check_open()?;
        // The time is read when the writer runs the call, so timestamps
        // follow commit order.
        let clock = self.inner.config.clock.clone();
        self.inner
            .writer
            .run(move |conn, sql| work(conn, sql, clock.now().as_millis()))
            .await
    }

    async fn read<T: Send + 'static>(
        &self,
        query: impl FnOnce(&Connection, &Sql) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.check_open()?;
        match &self.inner.readers {
            Readers::Writer => {
                self.inner
                    .writer
                    .run(move |conn, sql| Ok((query(conn, sql)?, Vec::new())))
                    .await
            }
            Readers::Pool(pool) => {
                let conn = pool
                    .get()
                    .await
                    .map_err(|e| SqliteError::Pool(e.to_string()))?;
                let sql = self.inner.sql.clone();
                conn.interact(move |conn| query(conn, &sql))
                    .await
                    .map_err(|e| SqliteError::Pool(e.to_string()))?
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Readers::Pool(pool) = &self.readers {
            // Pooled connections are closed on blocking threads of a tokio
            // runtime; outside one that would panic.
            let _entered = tokio::runtime::Handle::try_current()
                .is_err()
                .then(|| self.runtime.enter());
            pool.close();
        }
    }
}

fn read_pool(path: &std::path::Path, config: &SqliteConfig) -> Result<deadpool_sqlite::Pool> {
    let busy_timeout = config.busy_timeout;
    deadpool_sqlite::Config::new(path)
        .builder(Runtime::Tokio1)
        .map_err(|e| SqliteError::Pool(e.to_string()))?
        .max_size(config.read_connections.max(1))
        .post_create(Hook::async_fn(move |conn, _| {
            Box::pin(async move {
                conn.interact(move |conn| {
                    conn.busy_timeout(busy_timeout)?;
                    conn.pragma_update(None, "query_only", true)
                })
                .await
                .map_err(|e| HookError::message(e.to_string()))?
                .map_err(HookError::Backend)
            })
        }))
        .build()
        .map_err(|e| SqliteError::Pool(e.to_string()).into())
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("location", &self.inner.config.location)
            .field("table_prefix", &self.inner.config.table_prefix)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl PresenceStore for SqliteStore {
    async fn join(&self, key: &PresenceKey, meta: Meta) -> Result<Joined> {
        meta.check_size(self.inner.config.max_meta_bytes)?;
        let key = key.clone();
        self.write(move |conn, sql, now| sql::join(conn, sql, &key, meta, None, now))
            .await
    }

    async fn join_limited(
        &self,
        key: &PresenceKey,
        meta: Meta,
        max_members: u32,
    ) -> Result<Joined> {
        meta.check_size(self.inner.config.max_meta_bytes)?;
        let key = key.clone();
        self.write(move |conn, sql, now| sql::join(conn, sql, &key, meta, Some(max_members), now))
            .await
    }

    async fn update(&self, key: &PresenceKey, meta: Meta) -> Result<Option<Entry>> {
        meta.check_size(self.inner.config.max_meta_bytes)?;
        let key = key.clone();
        self.write(move |conn, sql, now| sql::update(conn, sql, &key, meta, now))
            .await
    }

    async fn touch(&self, key: &PresenceKey) -> Result<bool> {
        let keys = vec![key.clone()];
        let absent = self
            .write(move |conn, sql, now| Ok((sql::touch(conn, sql, &keys, now)?, Vec::new())))
            .await?;
        Ok(absent.is_empty())
    }

    async fn touch_many(&self, keys: &[PresenceKey]) -> Result<Vec<PresenceKey>> {
        check_batch(keys)?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let keys = keys.to_vec();
        self.write(move |conn, sql, now| Ok((sql::touch(conn, sql, &keys, now)?, Vec::new())))
            .await
    }

    async fn leave(&self, key: &PresenceKey) -> Result<Option<Departure>> {
        let key = key.clone();
        let mut departures = self
            .write(move |conn, sql, _| sql::leave(conn, sql, &key))
            .await?;
        Ok(departures.pop())
    }

    async fn leave_member(&self, topic: &Topic, member: &MemberId) -> Result<Vec<Departure>> {
        let (topic, member) = (topic.clone(), member.clone());
        self.write(move |conn, sql, _| sql::leave_member(conn, sql, &topic, &member))
            .await
    }

    async fn disconnect(
        &self,
        member: &MemberId,
        connection: &ConnectionId,
    ) -> Result<Vec<Departure>> {
        let (member, connection) = (member.clone(), connection.clone());
        self.write(move |conn, sql, _| sql::disconnect(conn, sql, &member, &connection))
            .await
    }

    async fn members(&self, topic: &Topic) -> Result<Vec<Member>> {
        let topic = topic.clone();
        self.read(move |conn, sql| sql::members(conn, sql, &topic))
            .await
    }

    async fn member(&self, topic: &Topic, member: &MemberId) -> Result<Option<Member>> {
        let (topic, member) = (topic.clone(), member.clone());
        self.read(move |conn, sql| sql::member(conn, sql, &topic, &member))
            .await
    }

    async fn count(&self, topic: &Topic) -> Result<Counts> {
        let topic = topic.clone();
        self.read(move |conn, sql| sql::count(conn, sql, &topic))
            .await
    }

    async fn sweep(&self, topic: &Topic, older_than: Timestamp) -> Result<Vec<Departure>> {
        let topic = topic.clone();
        self.write(move |conn, sql, _| sql::sweep(conn, sql, Some(&topic), older_than))
            .await
    }

    async fn sweep_all(&self, older_than: Timestamp) -> Result<Vec<Departure>> {
        self.write(move |conn, sql, _| sql::sweep(conn, sql, None, older_than))
            .await
    }

    async fn topics_of(&self, member: &MemberId) -> Result<Vec<Topic>> {
        let member = member.clone();
        self.read(move |conn, sql| sql::topics_of(conn, sql, &member))
            .await
    }

    async fn subscribe(&self, topic: &Topic) -> Result<EventStream> {
        self.check_open()?;
        let channels = self
            .inner
            .channels
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        Ok(channels.subscribe(topic))
    }

    fn clock(&self) -> Arc<dyn Clock> {
        self.inner.config.clock.clone()
    }

    fn max_meta_bytes(&self) -> usize {
        self.inner.config.max_meta_bytes
    }

    fn events_are_complete(&self) -> bool {
        // Other processes may write a file; their events stay with them.
        matches!(self.inner.config.location, Location::Memory)
    }

    async fn close(&self) -> Result<()> {
        self.inner
            .closed
            .store(true, std::sync::atomic::Ordering::Release);
        self.inner
            .channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .close();
        Ok(())
    }
}
