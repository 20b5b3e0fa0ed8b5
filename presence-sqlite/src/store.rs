//! `SqliteStore`: the `PresenceStore` contract on one SQLite database.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use presence_core::{
    Clock, ConnectionId, Counts, Departure, Entry, Error, EventStream, Joined, Member, MemberId,
    Meta, PresenceKey, PresenceStore, Result, Timestamp, Topic, TopicBroadcast, check_batch,
    metrics,
};
use rusqlite::Connection;

use crate::checkpoint::Checkpointer;
use crate::config::{Location, SqliteConfig};
use crate::error::{BACKEND, SqliteError, closed, db};
use crate::reader::Readers;
use crate::schema::{SCHEMA_VERSION, open_and_migrate};
use crate::sql::{self, Sql};
use crate::writer::{Open, Writer, WriterSetup, WriterStats};

/// The SQLite store. Writes go to one writer thread that commits every call
/// waiting at that moment as one transaction; reads go to a few reader
/// threads, each with a read-only connection (WAL lets them read while the
/// writer writes). The async API only hands them work: nothing runs on the
/// caller's runtime, and any tokio runtime (or none) can drive the calls.
///
/// Cloning is cheap and clones share the threads and the events.
///
/// # Shutting down
///
/// [`close`](PresenceStore::close) is the way to wait: it lets the threads
/// commit and answer every call already made, ends the event streams,
/// joins the threads and closes the connections (the write connection last,
/// so SQLite folds the WAL into the file and removes it).
///
/// Dropping the last clone without `close` never blocks the dropping
/// thread, in async code or not: it only tells the threads to stop. They
/// still commit what was already queued, close their connections and end
/// the event streams, on their own threads, shortly after. An acknowledged
/// write is durable either way; a process that exits right after a drop
/// may leave the WAL file beside the database, which the next open uses.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    config: SqliteConfig,
    writer: Writer,
    /// `None` for an in-memory database: its one connection is the
    /// writer's, which runs the reads too.
    readers: Option<Readers>,
    channels: TopicBroadcast,
    closed: AtomicBool,
}

impl SqliteStore {
    /// Opens (creating if needed, upgrading if older) the database `config`
    /// names. Fails with a clear `Error::Backend` for a file that is not a
    /// SQLite database or whose schema is newer than this code, and with
    /// `Error::InvalidInput` naming a setting that cannot work (a zero
    /// count, a table prefix that is not a plain identifier).
    pub async fn open(config: SqliteConfig) -> Result<Self> {
        config.check()?;
        let opened = Self::start(config.clone()).await;
        match &opened {
            Ok(_) => tracing::info!(
                location = ?config.location,
                table_prefix = %config.table_prefix,
                schema_version = SCHEMA_VERSION,
                "presence-sqlite store opened"
            ),
            // The caller gets the error and reports it: a warning here
            // would say it twice.
            Err(error) => tracing::debug!(
                location = ?config.location,
                error = %error.chain(),
                "presence-sqlite store could not be opened"
            ),
        }
        opened
    }

    async fn start(config: SqliteConfig) -> Result<Self> {
        let prefix = config.checked_prefix()?.to_owned();
        let sql = Arc::new(Sql::new(&prefix));
        let channels = TopicBroadcast::new(BACKEND, config.event_buffer);
        let before_closing = Arc::new(Mutex::new(Vec::new()));
        let writer = Writer::start(WriterSetup {
            open: write_connection(&config, prefix),
            sql: sql.clone(),
            channels: channels.clone(),
            max_group: config.max_group,
            before_closing: before_closing.clone(),
        })
        .await?;
        let readers = match &config.location {
            Location::Memory => None,
            Location::File(path) => {
                let started = Readers::start(
                    path,
                    config.read_connections,
                    config.busy_timeout,
                    sql.clone(),
                )
                .await;
                match started {
                    Ok((readers, threads)) => {
                        *before_closing
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) = threads;
                        Some(readers)
                    }
                    Err(error) => {
                        writer.stop();
                        writer.join().await;
                        return Err(error);
                    }
                }
            }
        };
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                writer,
                readers,
                channels,
                closed: AtomicBool::new(false),
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
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(closed());
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
        let result = self
            .inner
            .writer
            .run(move |conn, sql| work(conn, sql, clock.now().as_millis()))
            .await;
        counted(result)
    }

    async fn read<T: Send + 'static>(
        &self,
        query: impl FnOnce(&Connection, &Sql) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.check_open()?;
        let result = match &self.inner.readers {
            Some(readers) => readers.run(query).await,
            None => {
                self.inner
                    .writer
                    .run(move |conn, sql| Ok((query(conn, sql)?, Vec::new())))
                    .await
            }
        };
        counted(result)
    }

    async fn removal(
        &self,
        remove: impl FnOnce(&Connection, &Sql) -> Result<(Vec<Departure>, Vec<presence_core::Event>)>
        + Send
        + 'static,
    ) -> Result<Vec<Departure>> {
        let departures = self.write(move |conn, sql, _| remove(conn, sql)).await?;
        metrics::departed(BACKEND, &departures);
        Ok(departures)
    }

    async fn joined(&self, key: &PresenceKey, meta: Meta, limit: Option<u32>) -> Result<Joined> {
        meta.check_size(self.inner.config.max_meta_bytes)?;
        let key = key.clone();
        let result = self
            .write(move |conn, sql, now| sql::join(conn, sql, &key, meta, limit, now))
            .await;
        match &result {
            Ok(joined) => metrics::joined(BACKEND, joined),
            Err(Error::TopicFull { .. }) => metrics::join_refused(BACKEND),
            Err(_) => {}
        }
        result
    }

    async fn touched(&self, keys: Vec<PresenceKey>) -> Result<Vec<PresenceKey>> {
        let count = keys.len();
        let absent = self
            .write(move |conn, sql, now| Ok((sql::touch(conn, sql, &keys, now)?, Vec::new())))
            .await?;
        metrics::touched(BACKEND, count, absent.len());
        tracing::trace!(keys = count, absent = absent.len(), "presence-sqlite touch");
        Ok(absent)
    }
}

/// Counts a call that failed underneath.
fn counted<T>(result: Result<T>) -> Result<T> {
    if let Err(Error::Backend { .. }) = &result {
        metrics::backend_error(BACKEND);
    }
    result
}

/// What the writer thread opens: the write connection, its schema brought
/// up to date, and for a file the checkpointer beside it.
fn write_connection(config: &SqliteConfig, prefix: String) -> Open {
    let location = config.location.clone();
    let busy_timeout = config.busy_timeout;
    let pages = config.checkpoint_pages;
    let background = config.background_checkpoints;
    Box::new(move || {
        let conn = open_and_migrate(&location, &prefix, SCHEMA_VERSION, busy_timeout)?;
        let checkpointer = match &location {
            Location::File(path) if background => {
                let other = Connection::open(path).map_err(db)?;
                other.busy_timeout(busy_timeout).map_err(db)?;
                let checkpointer = Checkpointer::spawn(&conn, other, pages).map_err(|source| {
                    SqliteError::Thread {
                        thread: "checkpointer",
                        source,
                    }
                })?;
                Some(checkpointer)
            }
            // Only the writer writes, so only its checkpoints matter;
            // SQLite's own run inside the commit that crosses the line.
            _ => {
                conn.pragma_update(None, "wal_autocheckpoint", pages)
                    .map_err(db)?;
                None
            }
        };
        Ok((conn, checkpointer))
    })
}

impl Drop for Inner {
    /// Tells the threads to stop, without waiting for them (see
    /// [`SqliteStore`]'s "Shutting down").
    fn drop(&mut self) {
        if let Some(readers) = &self.readers {
            readers.stop();
        }
        self.writer.stop();
    }
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
        self.joined(key, meta, None).await
    }

    async fn join_limited(
        &self,
        key: &PresenceKey,
        meta: Meta,
        max_members: u32,
    ) -> Result<Joined> {
        self.joined(key, meta, Some(max_members)).await
    }

    async fn update(&self, key: &PresenceKey, meta: Meta) -> Result<Option<Entry>> {
        meta.check_size(self.inner.config.max_meta_bytes)?;
        let key = key.clone();
        self.write(move |conn, sql, now| sql::update(conn, sql, &key, meta, now))
            .await
    }

    async fn touch(&self, key: &PresenceKey) -> Result<bool> {
        Ok(self.touched(vec![key.clone()]).await?.is_empty())
    }

    async fn touch_many(&self, keys: &[PresenceKey]) -> Result<Vec<PresenceKey>> {
        check_batch(keys)?;
        if keys.is_empty() {
            self.check_open()?;
            return Ok(Vec::new());
        }
        self.touched(keys.to_vec()).await
    }

    async fn leave(&self, key: &PresenceKey) -> Result<Option<Departure>> {
        let key = key.clone();
        let mut departures = self
            .removal(move |conn, sql| sql::leave(conn, sql, &key))
            .await?;
        Ok(departures.pop())
    }

    async fn leave_member(&self, topic: &Topic, member: &MemberId) -> Result<Vec<Departure>> {
        let (topic, member) = (topic.clone(), member.clone());
        self.removal(move |conn, sql| sql::leave_member(conn, sql, &topic, &member))
            .await
    }

    async fn disconnect(
        &self,
        member: &MemberId,
        connection: &ConnectionId,
    ) -> Result<Vec<Departure>> {
        let (member, connection) = (member.clone(), connection.clone());
        self.removal(move |conn, sql| sql::disconnect(conn, sql, &member, &connection))
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
        self.removal(move |conn, sql| sql::sweep(conn, sql, &topic, older_than))
            .await
    }

    /// Sweeps in pieces of about `sweep_piece_rows` entries, each a turn of
    /// the writer of its own, so other writes go on between them: whole
    /// topics per piece, so each topic is swept atomically (as the contract
    /// asks) and `last_for_member` is exact. Each piece's events are
    /// delivered when it commits. If the store is closed during a sweep,
    /// the call returns what the pieces committed by then removed (the
    /// rest stays for the next sweep); if a piece fails, the call fails,
    /// and what earlier pieces removed is gone (their events were sent).
    async fn sweep_all(&self, older_than: Timestamp) -> Result<Vec<Departure>> {
        self.check_open()?;
        let start = Instant::now();
        let rows = self.inner.config.sweep_piece_rows;
        let (mut departures, mut deleted, mut pieces) = (Vec::new(), 0, 0);
        loop {
            let piece = self
                .write(move |conn, sql, _| sql::sweep_piece(conn, sql, older_than, rows))
                .await;
            let piece = match piece {
                Ok(piece) => piece,
                Err(Error::Closed { .. }) if pieces > 0 => break,
                Err(error) => return Err(error),
            };
            pieces += 1;
            metrics::departed(BACKEND, &piece.departures);
            deleted += piece.rows;
            departures.extend(piece.departures);
            if !piece.more {
                break;
            }
        }
        // Pieces hold whole topics: a stable sort by key keeps each
        // member's departures in order, its last one last.
        departures.sort_by(|a: &Departure, b: &Departure| a.entry.key.cmp(&b.entry.key));
        let took = start.elapsed();
        metrics::sweep(BACKEND, took);
        tracing::debug!(
            departures = departures.len(),
            rows = deleted,
            pieces,
            ?took,
            "presence-sqlite sweep_all"
        );
        Ok(departures)
    }

    async fn topics_of(&self, member: &MemberId) -> Result<Vec<Topic>> {
        let member = member.clone();
        self.read(move |conn, sql| sql::topics_of(conn, sql, &member))
            .await
    }

    async fn subscribe(&self, topic: &Topic) -> Result<EventStream> {
        self.check_open()?;
        Ok(self.inner.channels.subscribe(topic))
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
        let first = !self.inner.closed.swap(true, Ordering::AcqRel);
        // The readers answer what they were given and stop; the writer
        // commits and answers what it was given, joins the readers and the
        // checkpointer, closes its connection last and ends the streams.
        if let Some(readers) = &self.inner.readers {
            readers.stop();
        }
        self.inner.writer.stop();
        self.inner.writer.join().await;
        self.inner.channels.close();
        if first {
            tracing::info!(location = ?self.inner.config.location, "presence-sqlite store closed");
        }
        Ok(())
    }
}
