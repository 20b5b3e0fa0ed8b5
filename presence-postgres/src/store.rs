//! `PostgresStore`: the `PresenceStore` contract in a Postgres schema.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use deadpool_postgres::{ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts};
use presence_core::{
    Clock, ConnectionId, Counts, Departure, Entry, Error, EventStream, Joined, Member, MemberId,
    Meta, PresenceKey, PresenceStore, Reason, Result, Timestamp, Topic, check_batch, metrics,
};
use tokio::sync::{OnceCell, RwLock, RwLockReadGuard, Semaphore};
use tokio_postgres::Socket;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::types::ToSql;

use crate::batch::Batcher;
use crate::config::PostgresConfig;
use crate::connector::{Connector, driver_ssl_mode};
use crate::db::{Db, JoinAnswer, JoinRequest, PayloadIds, Sql};
use crate::errors::{self, BACKEND, db, failure};
use crate::listener::{Bounds, Listener};
use crate::{rows, schema};

/// The Postgres store: every call is one statement (a function of the
/// store's schema) on a pooled connection; events travel through
/// LISTEN/NOTIFY, so a subscriber sees the changes of every process.
///
/// Cloning is cheap and clones share the pool and the listener.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    config: PostgresConfig,
    db: Arc<Db>,
    listener: Listener,
    joins: Batcher<JoinRequest, JoinAnswer>,
    touches: Batcher<PresenceKey, bool>,
    leaves: Batcher<PresenceKey, Option<Departure>>,
    /// Set by `close`: every call after it fails with `Error::Closed`.
    closed: AtomicBool,
    /// Every call holds a read guard; `close` takes the write guard, so it
    /// waits for the calls already made.
    calls: RwLock<()>,
    /// The first `close` does the work; later ones wait for it.
    closing: OnceCell<()>,
}

/// A TLS connector the store can use for its pool and its event listener:
/// any tokio-postgres [`MakeTlsConnect`] that is `Clone + Send + Sync`
/// with sendable streams and futures (implemented for all of them).
pub trait StoreTls:
    MakeTlsConnect<
        Socket,
        Stream: Send + Sync,
        TlsConnect: Send + Sync + TlsConnect<Socket, Future: Send>,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<T> StoreTls for T
where
    T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
    T::Stream: Send + Sync,
    T::TlsConnect: Send + Sync,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
}

impl PostgresStore {
    /// Connects to the server `config.url` names with the TLS that
    /// `config.sslmode` asks for, makes sure the schema is current
    /// (creating or upgrading it when `config.migrate_on_open`), and starts
    /// listening for events.
    pub async fn connect(config: PostgresConfig) -> Result<Self> {
        config.check()?;
        let connector = Connector::from_config(&config)?;
        Self::connect_with(config, connector).await
    }

    /// [`connect`](Self::connect) with a TLS connector of the app's own
    /// (say, `tokio_postgres_rustls::MakeRustlsConnect` with its own
    /// roots, or `postgres_native_tls::MakeTlsConnector`), used for the pool
    /// and the event listener alike. `config.sslmode` then only says
    /// whether TLS is off (`disable`), tried (`prefer`) or required (any
    /// other); the connector does the verifying.
    pub async fn connect_with_tls<T>(config: PostgresConfig, tls: T) -> Result<Self>
    where
        T: StoreTls,
    {
        config.check()?;
        Self::connect_with(config, Connector::new(tls)).await
    }

    async fn connect_with(config: PostgresConfig, connector: Connector) -> Result<Self> {
        let mut pg = config.driver_config()?;
        pg.ssl_mode(driver_ssl_mode(config.sslmode));
        let manager = connector.manager(
            pg.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .runtime(Runtime::Tokio1)
            .timeouts(Timeouts {
                wait: Some(config.pool_wait_timeout),
                create: Some(config.pool_create_timeout),
                recycle: Some(config.pool_recycle_timeout),
            })
            .build()
            .map_err(|e| Error::backend(BACKEND, e))?;
        Self::open(pool, pg, config, connector).await
    }

    /// Uses an existing pool; `listen` is where the event listener connects
    /// (deadpool does not expose the pool's own configuration), with the
    /// TLS `config.sslmode` asks for. The pool's own timeouts apply, and
    /// the store's bound every call on top of them.
    pub async fn from_pool(
        pool: Pool,
        listen: tokio_postgres::Config,
        config: PostgresConfig,
    ) -> Result<Self> {
        config.check()?;
        let connector = Connector::from_config(&config)?;
        Self::open(pool, listen, config, connector).await
    }

    /// The listener's config, with TLS required when `config.sslmode` is
    /// stricter than `prefer` (no silent fallback to plaintext).
    fn listen_config(
        mut listen: tokio_postgres::Config,
        config: &PostgresConfig,
    ) -> tokio_postgres::Config {
        if !matches!(config.sslmode, crate::SslMode::Prefer) {
            listen.ssl_mode(driver_ssl_mode(config.sslmode));
        }
        listen
    }

    /// [`from_pool`](Self::from_pool) with the app's own TLS connector for
    /// the event listener: hand in the connector the pool was built with.
    pub async fn from_pool_with_tls<T>(
        pool: Pool,
        listen: tokio_postgres::Config,
        config: PostgresConfig,
        tls: T,
    ) -> Result<Self>
    where
        T: StoreTls,
    {
        config.check()?;
        Self::open(pool, listen, config, Connector::new(tls)).await
    }

    /// Creates or upgrades the schema `config.schema` to
    /// [`SCHEMA_VERSION`](crate::SCHEMA_VERSION) and returns the version it
    /// found (0: none), over one connection of its own; for deployments
    /// that migrate as a step of their own, with a role allowed to create,
    /// and open stores with `migrate_on_open = false` or a role that may
    /// not. Safe to run from many processes at once. Refuses a schema newer
    /// than this code.
    pub async fn migrate(config: &PostgresConfig) -> Result<usize> {
        config.check()?;
        let connector = Connector::from_config(config)?;
        migrate_over(config, connector).await
    }

    /// [`migrate`](Self::migrate) with the app's own TLS connector.
    pub async fn migrate_with_tls<T>(config: &PostgresConfig, tls: T) -> Result<usize>
    where
        T: StoreTls,
    {
        config.check()?;
        migrate_over(config, Connector::new(tls)).await
    }

    async fn open(
        pool: Pool,
        listen: tokio_postgres::Config,
        config: PostgresConfig,
        connector: Connector,
    ) -> Result<Self> {
        let schema = config.checked_schema()?.to_owned();
        let listen = Self::listen_config(listen, &config);
        let db = Arc::new(Db {
            pool,
            sql: Sql::new(&schema),
            config: config.clone(),
            payload_ids: PayloadIds::new(),
        });
        {
            let checkout = db.checkout().await?;
            prepare_schema(&db, checkout, &schema).await?;
        }
        let bounds = Bounds {
            connect: config.connect_timeout,
            call: config.call_timeout,
            ping: config.listener_ping_interval,
        };
        let listener = Listener::start(
            connector,
            listen,
            schema.clone(),
            config.event_buffer,
            bounds,
            config.listen_timeout,
        )
        .await?;
        // Postgres commits transactions that sent NOTIFY one at a time, so
        // join and leave batches gain nothing from running side by side:
        // each kind runs one batch at a time, and everything that arrives
        // meanwhile rides in the next. Touches send nothing and may use all
        // but two pooled connections at once.
        let one_at_a_time = || Arc::new(Semaphore::new(1));
        let touch_permits = Arc::new(Semaphore::new(
            db.pool.status().max_size.saturating_sub(2).max(1),
        ));
        let joins = {
            let db = db.clone();
            Batcher::start("join", one_at_a_time(), move |requests| {
                let db = db.clone();
                async move { db.join_batch(requests).await }
            })
        };
        let touches = {
            let (db, clock) = (db.clone(), config.clock.clone());
            Batcher::start("touch", touch_permits, move |keys: Vec<PresenceKey>| {
                let db = db.clone();
                let now = clock.now().as_millis();
                async move { db.touch_batch(&keys, now).await }
            })
        };
        let leaves = {
            let db = db.clone();
            Batcher::start("leave", one_at_a_time(), move |keys| {
                let db = db.clone();
                async move { db.leave_batch(keys).await }
            })
        };
        tracing::info!(schema, pool_size = config.pool_size, "postgres store open");
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                db,
                listener,
                joins,
                touches,
                leaves,
                closed: AtomicBool::new(false),
                calls: RwLock::new(()),
                closing: OnceCell::new(),
            }),
        })
    }

    /// The configuration the store was built with.
    pub fn config(&self) -> &PostgresConfig {
        &self.inner.config
    }

    /// The connection pool, for the app's own queries.
    pub fn pool(&self) -> &Pool {
        &self.inner.db.pool
    }

    /// Whether the event listener is connected right now.
    pub fn is_listening(&self) -> bool {
        self.inner.listener.is_connected()
    }

    fn now(&self) -> i64 {
        self.inner.config.clock.now().as_millis()
    }

    /// Admits one call: fails with `Error::Closed` once `close` began.
    async fn enter(&self) -> Result<RwLockReadGuard<'_, ()>> {
        let guard = self.inner.calls.read().await;
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed { backend: BACKEND });
        }
        Ok(guard)
    }

    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>> {
        self.inner.db.query(sql, params).await
    }

    fn sql(&self) -> &Sql {
        &self.inner.db.sql
    }

    async fn join_inner(
        &self,
        key: &PresenceKey,
        meta: Meta,
        max_members: Option<u32>,
    ) -> Result<Joined> {
        meta.check_size(self.inner.config.max_meta_bytes)?;
        let _call = self.enter().await?;
        let now = self.now();
        let request = JoinRequest {
            key: key.clone(),
            meta: meta.clone(),
            now,
            max_members: max_members.map(i64::from),
        };
        let (outcome, joined_at, first_for_member) = self.inner.joins.call(request).await?;
        let joined_at = match (outcome.as_str(), joined_at) {
            ("full", _) => {
                metrics::join_refused(BACKEND);
                return Err(Error::TopicFull {
                    topic: key.topic.clone(),
                    max_members: max_members.unwrap_or(0),
                });
            }
            (_, Some(joined_at)) => joined_at,
            (other, None) => {
                return Err(failure(format!("join answered {other:?} without a time")));
            }
        };
        let joined = Joined {
            entry: Entry {
                key: key.clone(),
                meta,
                joined_at: Timestamp::from_millis(joined_at),
                last_seen_at: Timestamp::from_millis(now),
            },
            first_for_member,
            was_present: outcome == "rejoined",
        };
        metrics::joined(BACKEND, &joined);
        Ok(joined)
    }

    async fn close_once(&self) {
        self.inner.closed.store(true, Ordering::Release);
        // Wait for every call already made (batched ones included).
        drop(self.inner.calls.write().await);
        self.inner.joins.close().await;
        self.inner.touches.close().await;
        self.inner.leaves.close().await;
        // Everything committed so far reaches the subscribers before their
        // streams end: a sync sent now comes back after all of it.
        if self.inner.listener.is_connected() {
            let (token, payload, arrived) = self.inner.listener.barrier();
            let sent = self.query(&self.sql().sync, &[&payload]).await;
            let waited = match sent {
                Ok(_) => tokio::time::timeout(self.inner.config.subscribe_timeout, arrived)
                    .await
                    .is_ok_and(|arrived| arrived.is_ok()),
                Err(_) => false,
            };
            if !waited {
                self.inner.listener.forget(token);
                tracing::warn!(
                    "postgres store closing: the event listener did not confirm the last events; \
                     streams end without them"
                );
            }
        }
        self.inner.listener.close().await;
        self.inner.db.pool.close();
        tracing::info!(schema = self.inner.config.schema, "postgres store closed");
    }
}

/// Reads the schema's version, and migrates it when allowed and needed.
async fn prepare_schema(db: &Db, checkout: crate::db::Checkout, schema: &str) -> Result<()> {
    let migrate = db.config.migrate_on_open;
    let after = db.config.call_timeout;
    let mut checkout = checkout;
    let client: &mut tokio_postgres::Client = checkout.client_mut();
    match tokio::time::timeout(after, schema::prepare(client, schema, migrate)).await {
        Ok(result) => {
            checkout.release();
            result
        }
        Err(_) => Err(errors::timeout(
            "checking the schema's version",
            after,
            "call_timeout",
        )),
    }
}

async fn migrate_over(config: &PostgresConfig, connector: Connector) -> Result<usize> {
    let schema = config.checked_schema()?;
    let mut pg = config.driver_config()?;
    pg.ssl_mode(driver_ssl_mode(config.sslmode));
    let session = tokio::time::timeout(config.connect_timeout, connector.connect(pg))
        .await
        .map_err(|_| {
            errors::timeout(
                "connecting to the server",
                config.connect_timeout,
                "connect_timeout",
            )
        })?
        .map_err(db)?;
    let mut client = session.client;
    let work = async {
        let found = schema::version(&client, schema).await?;
        schema::migrate(&mut client, schema).await?;
        Ok(found)
    };
    tokio::time::timeout(config.call_timeout, work)
        .await
        .map_err(|_| errors::timeout("migrating the schema", config.call_timeout, "call_timeout"))?
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("schema", &self.inner.config.schema)
            .field("pool_size", &self.inner.config.pool_size)
            .finish_non_exhaustive()
    }
}

/// Counts the calls that failed in the backend.
fn observed<T>(result: Result<T>) -> Result<T> {
    if let Err(Error::Backend { .. }) = &result {
        metrics::backend_error(BACKEND);
    }
    result
}

#[async_trait]
impl PresenceStore for PostgresStore {
    async fn join(&self, key: &PresenceKey, meta: Meta) -> Result<Joined> {
        observed(self.join_inner(key, meta, None).await)
    }

    async fn join_limited(
        &self,
        key: &PresenceKey,
        meta: Meta,
        max_members: u32,
    ) -> Result<Joined> {
        observed(self.join_inner(key, meta, Some(max_members)).await)
    }

    async fn update(&self, key: &PresenceKey, meta: Meta) -> Result<Option<Entry>> {
        meta.check_size(self.inner.config.max_meta_bytes)?;
        let _call = self.enter().await?;
        let now = self.now();
        let params: [&(dyn ToSql + Sync); 5] = [
            &key.topic.as_str(),
            &key.member.as_str(),
            &key.connection.as_str(),
            &meta.to_json(),
            &now,
        ];
        observed(
            self.inner
                .db
                .transact(&self.sql().update, &params, |rows| {
                    let Some(row) = rows.first() else {
                        return Ok((None, Vec::new()));
                    };
                    let entry = Entry {
                        key: key.clone(),
                        meta: meta.clone(),
                        joined_at: Timestamp::from_millis(row.try_get(0).map_err(db)?),
                        last_seen_at: Timestamp::from_millis(now),
                    };
                    Ok((
                        Some(entry.clone()),
                        vec![presence_core::Event::Update { entry }],
                    ))
                })
                .await,
        )
    }

    async fn touch(&self, key: &PresenceKey) -> Result<bool> {
        let _call = self.enter().await?;
        observed(self.inner.touches.call(key.clone()).await)
    }

    async fn touch_many(&self, keys: &[PresenceKey]) -> Result<Vec<PresenceKey>> {
        check_batch(keys)?;
        let _call = self.enter().await?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let present = observed(self.inner.db.touch_batch(keys, self.now()).await)?;
        let mut seen = HashSet::new();
        Ok(keys
            .iter()
            .zip(present)
            .filter(|(key, present)| !present && seen.insert(*key))
            .map(|(key, _)| key.clone())
            .collect())
    }

    async fn leave(&self, key: &PresenceKey) -> Result<Option<Departure>> {
        let _call = self.enter().await?;
        observed(self.inner.leaves.call(key.clone()).await)
    }

    async fn leave_member(&self, topic: &Topic, member: &MemberId) -> Result<Vec<Departure>> {
        let _call = self.enter().await?;
        let params: [&(dyn ToSql + Sync); 2] = [&topic.as_str(), &member.as_str()];
        observed(
            self.inner
                .db
                .remove(&self.sql().leave_member, &params, Reason::Left)
                .await,
        )
    }

    async fn disconnect(
        &self,
        member: &MemberId,
        connection: &ConnectionId,
    ) -> Result<Vec<Departure>> {
        let _call = self.enter().await?;
        let params: [&(dyn ToSql + Sync); 2] = [&member.as_str(), &connection.as_str()];
        observed(
            self.inner
                .db
                .remove(&self.sql().disconnect, &params, Reason::Disconnected)
                .await,
        )
    }

    async fn members(&self, topic: &Topic) -> Result<Vec<Member>> {
        let _call = self.enter().await?;
        let rows = observed(self.query(&self.sql().members, &[&topic.as_str()]).await)?;
        Ok(Member::group(rows::entries(&rows)?))
    }

    async fn member(&self, topic: &Topic, member: &MemberId) -> Result<Option<Member>> {
        let _call = self.enter().await?;
        let rows = observed(
            self.query(&self.sql().member, &[&topic.as_str(), &member.as_str()])
                .await,
        )?;
        Ok(Member::group(rows::entries(&rows)?).pop())
    }

    async fn count(&self, topic: &Topic) -> Result<Counts> {
        let _call = self.enter().await?;
        let rows = observed(self.query(&self.sql().count, &[&topic.as_str()]).await)?;
        Ok(match rows.first() {
            Some(row) => Counts {
                members: row.try_get::<_, i64>(0).map_err(db)?.max(0) as u64,
                connections: row.try_get::<_, i64>(1).map_err(db)?.max(0) as u64,
            },
            None => Counts::default(),
        })
    }

    async fn sweep(&self, topic: &Topic, older_than: Timestamp) -> Result<Vec<Departure>> {
        let _call = self.enter().await?;
        let params: [&(dyn ToSql + Sync); 2] = [&Some(topic.as_str()), &older_than.as_millis()];
        observed(
            self.inner
                .db
                .remove(&self.sql().sweep, &params, Reason::Expired)
                .await,
        )
    }

    async fn sweep_all(&self, older_than: Timestamp) -> Result<Vec<Departure>> {
        let _call = self.enter().await?;
        observed(self.inner.db.sweep_all(older_than.as_millis()).await)
    }

    async fn topics_of(&self, member: &MemberId) -> Result<Vec<Topic>> {
        let _call = self.enter().await?;
        let rows = observed(self.query(&self.sql().topics_of, &[&member.as_str()]).await)?;
        rows::topics(&rows)
    }

    async fn subscribe(&self, topic: &Topic) -> Result<EventStream> {
        let _call = self.enter().await?;
        let listener = &self.inner.listener;
        let (token, payload, stream) = listener.prepare(topic);
        if let Err(error) = self.query(&self.sql().sync, &[&payload]).await {
            listener.forget(token);
            return observed(Err(error));
        }
        let after = self.inner.config.subscribe_timeout;
        match tokio::time::timeout(after, stream).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(_)) => Err(Error::Closed { backend: BACKEND }),
            Err(_) => {
                listener.forget(token);
                observed(Err(errors::timeout(
                    "the event listener's confirmation of the subscription",
                    after,
                    "subscribe_timeout",
                )))
            }
        }
    }

    fn clock(&self) -> Arc<dyn Clock> {
        self.inner.config.clock.clone()
    }

    fn max_meta_bytes(&self) -> usize {
        self.inner.config.max_meta_bytes
    }

    fn events_are_complete(&self) -> bool {
        // Every process's changes arrive through LISTEN/NOTIFY.
        true
    }

    async fn close(&self) -> Result<()> {
        self.inner.closing.get_or_init(|| self.close_once()).await;
        Ok(())
    }
}
