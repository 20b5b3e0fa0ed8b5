//! `PostgresStore`: the `PresenceStore` contract in a Postgres schema.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use presence_core::{
    Clock, ConnectionId, Counts, Departure, Entry, Error, Event, EventStream, Joined, Member,
    MemberId, Meta, PresenceKey, PresenceStore, Reason, Result, Timestamp, Topic, check_batch,
};
use tokio::sync::Semaphore;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

use crate::batch::Batcher;
use crate::config::PostgresConfig;
use crate::listener::Listener;
use crate::schema::{db, migrate};
use crate::wire;

/// How many times a call that lost a deadlock is run again. Each call is one
/// statement, so a call aborted by a deadlock changed nothing.
const DEADLOCK_RETRIES: usize = 5;

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
    closed: std::sync::atomic::AtomicBool,
}

/// The pool and the statements: what calls and batches run on.
struct Db {
    pool: Pool,
    sql: Sql,
    /// Makes every NOTIFY payload of this store unique (see `wire`).
    payload_ids: PayloadIds,
}

struct PayloadIds {
    /// Tells this store's payloads from other stores' on the channel.
    nonce: u64,
    next: AtomicU64,
}

impl PayloadIds {
    fn next(&self) -> String {
        format!(
            "{:x}-{}",
            self.nonce,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }
}

/// Why a transaction did not commit.
enum Failed {
    /// It lost a deadlock; it changed nothing and may run again.
    Deadlock,
    Error(Error),
}

impl From<tokio_postgres::Error> for Failed {
    fn from(error: tokio_postgres::Error) -> Self {
        if error.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED) {
            Failed::Deadlock
        } else {
            Failed::Error(db(error))
        }
    }
}

impl From<Error> for Failed {
    fn from(error: Error) -> Self {
        Failed::Error(error)
    }
}

/// One caller's join, as queued for a batch.
struct JoinRequest {
    key: PresenceKey,
    meta: Meta,
    now: i64,
    max_members: Option<i64>,
}

/// The database's answer to one join: outcome, joined_at, first_for_member.
type JoinAnswer = (String, Option<i64>, bool);

/// The statements, rendered once for the schema.
struct Sql {
    join_many: String,
    join_set: String,
    update: String,
    touch: String,
    notify: String,
    leave_many: String,
    leave_member: String,
    disconnect: String,
    sweep: String,
    members: String,
    member: String,
    count: String,
    topics_of: String,
    sync: String,
}

impl Sql {
    fn new(schema: &str) -> Self {
        let render = |template: &str| template.replace("{s}", schema);
        let entry_columns = "topic, member, connection, meta, joined_at, last_seen_at";
        Self {
            join_many: render(
                "SELECT r_i, r_outcome, r_joined_at, r_first, r_changed \
                 FROM {s}.join_many($1, $2, $3, $4, $5, $6)",
            ),
            join_set: render(
                "SELECT r_i, r_outcome, r_joined_at, r_first, r_changed FROM {s}.join_set($1, $2, $3, $4, $5)",
            ),
            update: render("SELECT r_joined_at FROM {s}.update($1, $2, $3, $4, $5)"),
            touch: render(
                "UPDATE {s}.entries AS e SET last_seen_at = $4 \
                 FROM unnest($1::text[], $2::text[], $3::text[]) AS k (t, m, c) \
                 WHERE e.topic = k.t AND e.member = k.m AND e.connection = k.c \
                 RETURNING e.topic, e.member, e.connection",
            ),
            leave_many: render(
                "SELECT topic, member, connection, meta, joined_at, last_seen_at, last_for_member, r_i \
                 FROM {s}.leave_many($1, $2, $3)",
            ),
            leave_member: render("SELECT * FROM {s}.leave_member($1, $2)"),
            disconnect: render("SELECT * FROM {s}.disconnect($1, $2)"),
            sweep: render("SELECT * FROM {s}.sweep($1, $2)"),
            members: render(&format!(
                "SELECT {entry_columns} FROM {{s}}.entries WHERE topic = $1"
            )),
            member: render(&format!(
                "SELECT {entry_columns} FROM {{s}}.entries WHERE topic = $1 AND member = $2"
            )),
            count: render("SELECT members, connections FROM {s}.topics WHERE topic = $1"),
            topics_of: render(
                "SELECT DISTINCT topic FROM {s}.entries WHERE member = $1 ORDER BY topic",
            ),
            notify: render(
                "SELECT count(pg_notify('{s}', payload)) FROM unnest($1::text[]) AS payload",
            ),
            sync: render("SELECT pg_notify('{s}', $1)"),
        }
    }
}

fn corrupt(error: Error) -> Error {
    Error::backend(
        "postgres",
        format!("a stored row is not valid presence data: {error}"),
    )
}

fn read_entry(row: &Row) -> Result<Entry> {
    let text = |i: usize| row.try_get::<_, &str>(i).map_err(db);
    Ok(Entry {
        key: PresenceKey::new(text(0)?, text(1)?, text(2)?).map_err(corrupt)?,
        meta: Meta::from_json(text(3)?).map_err(corrupt)?,
        joined_at: Timestamp::from_millis(row.try_get(4).map_err(db)?),
        last_seen_at: Timestamp::from_millis(row.try_get(5).map_err(db)?),
    })
}

/// A departure from a row of the schema's `departure` type.
fn read_departure(row: &Row, reason: Reason) -> Result<Departure> {
    Ok(Departure {
        entry: read_entry(row)?,
        reason,
        last_for_member: row.try_get(6).map_err(db)?,
    })
}

fn read_departures(rows: &[Row], reason: Reason) -> Result<Vec<Departure>> {
    rows.iter().map(|row| read_departure(row, reason)).collect()
}

fn key_columns(keys: &[PresenceKey]) -> (Vec<&str>, Vec<&str>, Vec<&str>) {
    let topics = keys.iter().map(|k| k.topic.as_str()).collect();
    let members = keys.iter().map(|k| k.member.as_str()).collect();
    let connections = keys.iter().map(|k| k.connection.as_str()).collect();
    (topics, members, connections)
}

/// Runs `attempt` again when it lost a deadlock: a statement or
/// transaction aborted by one changed nothing.
/// Ends a failed transaction, so the connection goes back to the pool
/// clean; a connection that cannot even do that is dropped by the pool.
async fn rollback(client: &tokio_postgres::Client) {
    let _ = client.batch_execute("ROLLBACK").await;
}

async fn retry_deadlocks<T, F, Fut>(mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Failed>>,
{
    let mut retries = 0;
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(Failed::Error(error)) => return Err(error),
            Err(Failed::Deadlock) if retries < DEADLOCK_RETRIES => {
                retries += 1;
                tokio::time::sleep(Duration::from_millis(1 << retries)).await;
            }
            Err(Failed::Deadlock) => {
                return Err(Error::backend("postgres", "lost a deadlock on every try"));
            }
        }
    }
}

fn leave_events(departures: &[Departure]) -> Vec<Event> {
    departures
        .iter()
        .map(|departure| Event::Leave {
            departure: departure.clone(),
        })
        .collect()
}

/// A connection from the pool; failing to get one is a backend error.
async fn pooled(pool: &Pool) -> Result<deadpool_postgres::Object> {
    pool.get().await.map_err(|e| Error::backend("postgres", e))
}

impl Db {
    /// Runs one statement on its own (no explicit transaction: one round
    /// trip). For calls that emit no events.
    async fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
        retry_deadlocks(|| async {
            let client = pooled(&self.pool).await?;
            let statement = client.prepare_cached(sql).await?;
            Ok(client.query(&statement, params).await?)
        })
        .await
    }

    /// Runs `sql` in a transaction, turns its rows into the call's result
    /// and events, NOTIFYs the events in the same transaction and commits:
    /// the events go out on commit, in commit order, or not at all.
    async fn transact<T>(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        outcome: impl Fn(&[Row]) -> Result<(T, Vec<Event>)>,
    ) -> Result<T> {
        retry_deadlocks(|| self.try_transact(sql, params, &outcome)).await
    }

    async fn try_transact<T>(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        outcome: &impl Fn(&[Row]) -> Result<(T, Vec<Event>)>,
    ) -> Result<T, Failed> {
        let client = pooled(&self.pool).await?;
        let statement = client.prepare_cached(sql).await?;
        let notify = client.prepare_cached(&self.sql.notify).await?;
        // Two round trips, not four: BEGIN goes out with the statement, and
        // the NOTIFY with COMMIT (a COMMIT after a failed NOTIFY rolls back,
        // and the NOTIFY's error is what the caller gets).
        let begun = futures::try_join!(
            client.batch_execute("BEGIN"),
            client.query(&statement, params)
        );
        let rows = match begun {
            Ok(((), rows)) => rows,
            Err(error) => {
                rollback(&client).await;
                return Err(error.into());
            }
        };
        let (value, events) = match outcome(&rows) {
            Ok(done) => done,
            Err(error) => {
                rollback(&client).await;
                return Err(error.into());
            }
        };
        let payloads = wire::encode(&events, || self.payload_ids.next());
        if payloads.is_empty() {
            client.batch_execute("COMMIT").await?;
        } else {
            let notify_params: [&(dyn ToSql + Sync); 1] = [&payloads];
            futures::try_join!(
                client.execute(&notify, &notify_params),
                client.batch_execute("COMMIT")
            )?;
        }
        Ok(value)
    }

    /// Many callers' joins in one statement; an answer per request, in order.
    async fn join_batch(&self, requests: Vec<JoinRequest>) -> Result<Vec<JoinAnswer>> {
        let keys: Vec<PresenceKey> = requests.iter().map(|r| r.key.clone()).collect();
        let (topics, members, connections) = key_columns(&keys);
        let metas: Vec<String> = requests.iter().map(|r| r.meta.to_json()).collect();
        let nows: Vec<i64> = requests.iter().map(|r| r.now).collect();
        let maxes: Vec<Option<i64>> = requests.iter().map(|r| r.max_members).collect();
        // Joins without limits, each key once, run set-based; anything else
        // request by request.
        let mut distinct = HashSet::with_capacity(keys.len());
        let simple = maxes.iter().all(Option::is_none) && keys.iter().all(|k| distinct.insert(k));
        let (sql, params): (&str, Vec<&(dyn ToSql + Sync)>) = if simple {
            (
                &self.sql.join_set,
                vec![&topics, &members, &connections, &metas, &nows],
            )
        } else {
            (
                &self.sql.join_many,
                vec![&topics, &members, &connections, &metas, &nows, &maxes],
            )
        };
        self.transact(sql, &params, |rows| {
            let mut answers: Vec<(i32, JoinAnswer, bool)> = rows
                .iter()
                .map(|row| {
                    let answer = (
                        row.try_get(1).map_err(db)?,
                        row.try_get(2).map_err(db)?,
                        row.try_get(3).map_err(db)?,
                    );
                    Ok((
                        row.try_get(0).map_err(db)?,
                        answer,
                        row.try_get(4).map_err(db)?,
                    ))
                })
                .collect::<Result<_>>()?;
            answers.sort_by_key(|(i, _, _)| *i);
            if answers.len() != requests.len() {
                return Err(Error::backend(
                    "postgres",
                    "a join batch got a wrong number of answers",
                ));
            }
            let mut events = Vec::new();
            for (request, (_, (outcome, joined_at, first), changed)) in
                requests.iter().zip(&answers)
            {
                let entry = |joined_at: i64| Entry {
                    key: request.key.clone(),
                    meta: request.meta.clone(),
                    joined_at: Timestamp::from_millis(joined_at),
                    last_seen_at: Timestamp::from_millis(request.now),
                };
                match (outcome.as_str(), joined_at) {
                    ("joined", _) => events.push(Event::Join {
                        entry: entry(request.now),
                        first_for_member: *first,
                    }),
                    ("rejoined", Some(joined_at)) if *changed => events.push(Event::Update {
                        entry: entry(*joined_at),
                    }),
                    _ => {}
                }
            }
            Ok((
                answers.into_iter().map(|(_, answer, _)| answer).collect(),
                events,
            ))
        })
        .await
    }

    /// Refreshes `last_seen_at` of `keys`; whether each was present.
    async fn touch_batch(&self, keys: &[PresenceKey], now: i64) -> Result<Vec<bool>> {
        let (topics, members, connections) = key_columns(keys);
        let rows = self
            .query(&self.sql.touch, &[&topics, &members, &connections, &now])
            .await?;
        let touched: HashSet<(&str, &str, &str)> = rows
            .iter()
            .map(|row| (row.get(0), row.get(1), row.get(2)))
            .collect();
        Ok(keys
            .iter()
            .map(|k| {
                touched.contains(&(k.topic.as_str(), k.member.as_str(), k.connection.as_str()))
            })
            .collect())
    }

    /// Many callers' leaves in one statement; a departure (or none) per key.
    async fn leave_batch(&self, keys: Vec<PresenceKey>) -> Result<Vec<Option<Departure>>> {
        let (topics, members, connections) = key_columns(&keys);
        self.transact(
            &self.sql.leave_many,
            &[&topics, &members, &connections],
            |rows| {
                let mut answers: Vec<Option<Departure>> = vec![None; keys.len()];
                let mut departed = Vec::with_capacity(rows.len());
                for row in rows {
                    let i: i32 = row.try_get(7).map_err(db)?;
                    let departure = read_departure(row, Reason::Left)?;
                    departed.push(departure.clone());
                    let slot = answers.get_mut((i - 1) as usize).ok_or_else(|| {
                        Error::backend("postgres", "leave_many answered a request it was not given")
                    })?;
                    *slot = Some(departure);
                }
                Ok((answers, leave_events(&departed)))
            },
        )
        .await
    }

    /// A removal that returns the schema's `departure` rows.
    async fn remove(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        reason: Reason,
    ) -> Result<Vec<Departure>> {
        self.transact(sql, params, |rows| {
            let departures = read_departures(rows, reason)?;
            let events = leave_events(&departures);
            Ok((departures, events))
        })
        .await
    }
}

impl PostgresStore {
    /// Connects to the server `config.url` names, creates or upgrades the
    /// schema, and starts listening for events.
    pub async fn connect(config: PostgresConfig) -> Result<Self> {
        let pg: tokio_postgres::Config = config.url.parse().map_err(|e| {
            Error::invalid("url", format!("is not a Postgres connection string: {e}"))
        })?;
        let manager = Manager::from_config(
            pg.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size.max(1))
            .build()
            .map_err(|e| Error::backend("postgres", e))?;
        Self::from_pool(pool, pg, config).await
    }

    /// Uses an existing pool; `listen` is where the event listener connects
    /// (deadpool does not expose the pool's own configuration).
    pub async fn from_pool(
        pool: Pool,
        listen: tokio_postgres::Config,
        config: PostgresConfig,
    ) -> Result<Self> {
        let schema = config.checked_schema()?.to_owned();
        {
            let mut client = pooled(&pool).await?;
            migrate(&mut client, &schema).await?;
        }
        let listener = Listener::start(listen, schema.clone(), config.event_buffer).await?;
        // Postgres commits transactions that sent NOTIFY one at a time, so
        // join and leave batches gain nothing from running side by side:
        // each kind runs one batch at a time, and everything that arrives
        // meanwhile rides in the next. Touches send nothing and may use all
        // but two pooled connections at once.
        let one_at_a_time = || Arc::new(Semaphore::new(1));
        let touch_permits = Arc::new(Semaphore::new(
            pool.status().max_size.saturating_sub(2).max(1),
        ));
        let db = Arc::new(Db {
            pool,
            sql: Sql::new(&schema),
            payload_ids: PayloadIds {
                nonce: std::hash::BuildHasher::hash_one(
                    &std::collections::hash_map::RandomState::new(),
                    std::process::id(),
                ),
                next: AtomicU64::new(0),
            },
        });
        let joins = {
            let db = db.clone();
            Batcher::start(one_at_a_time(), move |requests| {
                let db = db.clone();
                async move { db.join_batch(requests).await }
            })
        };
        let touches = {
            let (db, clock) = (db.clone(), config.clock.clone());
            Batcher::start(touch_permits, move |keys: Vec<PresenceKey>| {
                let db = db.clone();
                let now = clock.now().as_millis();
                async move { db.touch_batch(&keys, now).await }
            })
        };
        let leaves = {
            let db = db.clone();
            Batcher::start(one_at_a_time(), move |keys| {
                let db = db.clone();
                async move { db.leave_batch(keys).await }
            })
        };
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                db,
                listener,
                joins,
                touches,
                leaves,
                closed: std::sync::atomic::AtomicBool::new(false),
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

    async fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
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
                return Err(Error::TopicFull {
                    topic: key.topic.clone(),
                    max_members: max_members.unwrap_or(0),
                });
            }
            (_, Some(joined_at)) => joined_at,
            (other, None) => {
                return Err(Error::backend(
                    "postgres",
                    format!("join answered {other:?} without a time"),
                ));
            }
        };
        Ok(Joined {
            entry: Entry {
                key: key.clone(),
                meta,
                joined_at: Timestamp::from_millis(joined_at),
                last_seen_at: Timestamp::from_millis(now),
            },
            first_for_member,
            was_present: outcome == "rejoined",
        })
    }
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("schema", &self.inner.config.schema)
            .field("pool_size", &self.inner.config.pool_size)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl PresenceStore for PostgresStore {
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
        meta.check_size(self.inner.config.max_meta_bytes)?;
        let now = self.now();
        let params: [&(dyn ToSql + Sync); 5] = [
            &key.topic.as_str(),
            &key.member.as_str(),
            &key.connection.as_str(),
            &meta.to_json(),
            &now,
        ];
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
                Ok((Some(entry.clone()), vec![Event::Update { entry }]))
            })
            .await
    }

    async fn touch(&self, key: &PresenceKey) -> Result<bool> {
        self.inner.touches.call(key.clone()).await
    }

    async fn touch_many(&self, keys: &[PresenceKey]) -> Result<Vec<PresenceKey>> {
        check_batch(keys)?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let present = self.inner.db.touch_batch(keys, self.now()).await?;
        let mut seen = HashSet::new();
        Ok(keys
            .iter()
            .zip(present)
            .filter(|(key, present)| !present && seen.insert(*key))
            .map(|(key, _)| key.clone())
            .collect())
    }

    async fn leave(&self, key: &PresenceKey) -> Result<Option<Departure>> {
        self.inner.leaves.call(key.clone()).await
    }

    async fn leave_member(&self, topic: &Topic, member: &MemberId) -> Result<Vec<Departure>> {
        let params: [&(dyn ToSql + Sync); 2] = [&topic.as_str(), &member.as_str()];
        self.inner
            .db
            .remove(&self.sql().leave_member, &params, Reason::Left)
            .await
    }

    async fn disconnect(
        &self,
        member: &MemberId,
        connection: &ConnectionId,
    ) -> Result<Vec<Departure>> {
        let params: [&(dyn ToSql + Sync); 2] = [&member.as_str(), &connection.as_str()];
        self.inner
            .db
            .remove(&self.sql().disconnect, &params, Reason::Disconnected)
            .await
    }

    async fn members(&self, topic: &Topic) -> Result<Vec<Member>> {
        let rows = self.query(&self.sql().members, &[&topic.as_str()]).await?;
        let entries = rows.iter().map(read_entry).collect::<Result<Vec<_>>>()?;
        Ok(Member::group(entries))
    }

    async fn member(&self, topic: &Topic, member: &MemberId) -> Result<Option<Member>> {
        let rows = self
            .query(&self.sql().member, &[&topic.as_str(), &member.as_str()])
            .await?;
        let entries = rows.iter().map(read_entry).collect::<Result<Vec<_>>>()?;
        Ok(Member::group(entries).pop())
    }

    async fn count(&self, topic: &Topic) -> Result<Counts> {
        let rows = self.query(&self.sql().count, &[&topic.as_str()]).await?;
        Ok(match rows.first() {
            Some(row) => Counts {
                members: row.try_get::<_, i64>(0).map_err(db)?.max(0) as u64,
                connections: row.try_get::<_, i64>(1).map_err(db)?.max(0) as u64,
            },
            None => Counts::default(),
        })
    }

    async fn sweep(&self, topic: &Topic, older_than: Timestamp) -> Result<Vec<Departure>> {
        let params: [&(dyn ToSql + Sync); 2] = [&Some(topic.as_str()), &older_than.as_millis()];
        self.inner
            .db
            .remove(&self.sql().sweep, &params, Reason::Expired)
            .await
    }

    async fn sweep_all(&self, older_than: Timestamp) -> Result<Vec<Departure>> {
        let params: [&(dyn ToSql + Sync); 2] = [&None::<&str>, &older_than.as_millis()];
        self.inner
            .db
            .remove(&self.sql().sweep, &params, Reason::Expired)
            .await
    }

    async fn topics_of(&self, member: &MemberId) -> Result<Vec<Topic>> {
        let rows = self
            .query(&self.sql().topics_of, &[&member.as_str()])
            .await?;
        rows.iter()
            .map(|row| Topic::new(row.try_get::<_, &str>(0).map_err(db)?).map_err(corrupt))
            .collect()
    }

    async fn subscribe(&self, topic: &Topic) -> Result<EventStream> {
        let (token, stream) = self.inner.listener.prepare(topic);
        self.query(&self.sql().sync, &[&token]).await?;
        match tokio::time::timeout(Duration::from_secs(30), stream).await {
            Ok(Ok(stream)) => Ok(stream),
            _ => Err(Error::backend(
                "postgres",
                "the event listener did not confirm the subscription within 30 s",
            )),
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
        self.inner.closed.store(true, Ordering::Release);
        self.inner.listener.close();
        Ok(())
    }
}
