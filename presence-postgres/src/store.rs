//! `PostgresStore`: the `PresenceStore` contract in a Postgres schema.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use presence_core::{
    Clock, ConnectionId, Counts, Departure, Entry, Error, EventStream, Joined, Member, MemberId,
    Meta, PresenceKey, PresenceStore, Reason, Result, Timestamp, Topic, check_batch,
};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

use crate::config::PostgresConfig;
use crate::listener::Listener;
use crate::schema::{db, migrate};

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
    pool: Pool,
    sql: Sql,
    listener: Listener,
}

/// The statements, rendered once for the schema.
struct Sql {
    join: String,
    update: String,
    touch: String,
    leave: String,
    leave_member: String,
    disconnect: String,
    sweep: String,
    members: String,
    member: String,
    count: String,
    topics_of: String,
    notify: String,
}

impl Sql {
    fn new(schema: &str) -> Self {
        let render = |template: &str| template.replace("{s}", schema);
        let entry_columns = "topic, member, connection, meta, joined_at, last_seen_at";
        Self {
            join: render(
                "SELECT r_outcome, r_joined_at, r_first FROM {s}.join($1, $2, $3, $4, $5, $6)",
            ),
            update: render("SELECT r_joined_at FROM {s}.update($1, $2, $3, $4, $5)"),
            touch: render(
                "UPDATE {s}.entries AS e SET last_seen_at = $4 \
                 FROM unnest($1::text[], $2::text[], $3::text[]) AS k (t, m, c) \
                 WHERE e.topic = k.t AND e.member = k.m AND e.connection = k.c \
                 RETURNING e.topic, e.member, e.connection",
            ),
            leave: render("SELECT * FROM {s}.leave($1, $2, $3)"),
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
            notify: render("SELECT pg_notify('{s}', $1)"),
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

fn read_departures(rows: &[Row], reason: Reason) -> Result<Vec<Departure>> {
    rows.iter()
        .map(|row| {
            Ok(Departure {
                entry: read_entry(row)?,
                reason,
                last_for_member: row.try_get(6).map_err(db)?,
            })
        })
        .collect()
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
            let mut client = pool
                .get()
                .await
                .map_err(|e| Error::backend("postgres", e))?;
            migrate(&mut client, &schema).await?;
        }
        let listener = Listener::start(listen, schema.clone(), config.event_buffer).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                sql: Sql::new(&schema),
                config,
                pool,
                listener,
            }),
        })
    }

    /// The configuration the store was built with.
    pub fn config(&self) -> &PostgresConfig {
        &self.inner.config
    }

    /// The connection pool, for the app's own queries.
    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// Whether the event listener is connected right now.
    pub fn is_listening(&self) -> bool {
        self.inner.listener.is_connected()
    }

    fn now(&self) -> i64 {
        self.inner.config.clock.now().as_millis()
    }

    /// Runs one statement on a pooled connection, again if it lost a deadlock.
    async fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
        let mut attempt = 0;
        loop {
            let client = self
                .inner
                .pool
                .get()
                .await
                .map_err(|e| Error::backend("postgres", e))?;
            let statement = client.prepare_cached(sql).await.map_err(db)?;
            match client.query(&statement, params).await {
                Err(error)
                    if error.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED)
                        && attempt < DEADLOCK_RETRIES =>
                {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(1 << attempt)).await;
                }
                result => return result.map_err(db),
            }
        }
    }

    async fn join_inner(
        &self,
        key: &PresenceKey,
        meta: Meta,
        max_members: Option<u32>,
    ) -> Result<Joined> {
        meta.check_size(self.inner.config.max_meta_bytes)?;
        let now = self.now();
        let max = max_members.map(i64::from);
        let rows = self
            .query(
                &self.inner.sql.join,
                &[
                    &key.topic.as_str(),
                    &key.member.as_str(),
                    &key.connection.as_str(),
                    &meta.to_json(),
                    &now,
                    &max,
                ],
            )
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| Error::backend("postgres", "join returned no row"))?;
        let outcome: &str = row.try_get(0).map_err(db)?;
        if outcome == "full" {
            return Err(Error::TopicFull {
                topic: key.topic.clone(),
                max_members: max_members.unwrap_or(0),
            });
        }
        let joined_at: i64 = row.try_get(1).map_err(db)?;
        Ok(Joined {
            entry: Entry {
                key: key.clone(),
                meta,
                joined_at: Timestamp::from_millis(joined_at),
                last_seen_at: Timestamp::from_millis(now),
            },
            first_for_member: row.try_get(2).map_err(db)?,
            was_present: outcome == "rejoined",
        })
    }

    async fn touch_keys(&self, keys: &[PresenceKey]) -> Result<Vec<PresenceKey>> {
        let topics: Vec<&str> = keys.iter().map(|k| k.topic.as_str()).collect();
        let members: Vec<&str> = keys.iter().map(|k| k.member.as_str()).collect();
        let connections: Vec<&str> = keys.iter().map(|k| k.connection.as_str()).collect();
        let now = self.now();
        let rows = self
            .query(
                &self.inner.sql.touch,
                &[&topics, &members, &connections, &now],
            )
            .await?;
        let touched: HashSet<(&str, &str, &str)> = rows
            .iter()
            .map(|row| (row.get(0), row.get(1), row.get(2)))
            .collect();
        let mut seen = HashSet::new();
        Ok(keys
            .iter()
            .filter(|k| {
                !touched.contains(&(k.topic.as_str(), k.member.as_str(), k.connection.as_str()))
            })
            .filter(|k| seen.insert(*k))
            .cloned()
            .collect())
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
        let rows = self
            .query(
                &self.inner.sql.update,
                &[
                    &key.topic.as_str(),
                    &key.member.as_str(),
                    &key.connection.as_str(),
                    &meta.to_json(),
                    &now,
                ],
            )
            .await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        Ok(Some(Entry {
            key: key.clone(),
            meta,
            joined_at: Timestamp::from_millis(row.try_get(0).map_err(db)?),
            last_seen_at: Timestamp::from_millis(now),
        }))
    }

    async fn touch(&self, key: &PresenceKey) -> Result<bool> {
        Ok(self.touch_keys(std::slice::from_ref(key)).await?.is_empty())
    }

    async fn touch_many(&self, keys: &[PresenceKey]) -> Result<Vec<PresenceKey>> {
        check_batch(keys)?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.touch_keys(keys).await
    }

    async fn leave(&self, key: &PresenceKey) -> Result<Option<Departure>> {
        let params: [&(dyn ToSql + Sync); 3] = [
            &key.topic.as_str(),
            &key.member.as_str(),
            &key.connection.as_str(),
        ];
        let rows = self.query(&self.inner.sql.leave, &params).await?;
        Ok(read_departures(&rows, Reason::Left)?.pop())
    }

    async fn leave_member(&self, topic: &Topic, member: &MemberId) -> Result<Vec<Departure>> {
        let rows = self
            .query(
                &self.inner.sql.leave_member,
                &[&topic.as_str(), &member.as_str()],
            )
            .await?;
        read_departures(&rows, Reason::Left)
    }

    async fn disconnect(
        &self,
        member: &MemberId,
        connection: &ConnectionId,
    ) -> Result<Vec<Departure>> {
        let rows = self
            .query(
                &self.inner.sql.disconnect,
                &[&member.as_str(), &connection.as_str()],
            )
            .await?;
        read_departures(&rows, Reason::Disconnected)
    }

    async fn members(&self, topic: &Topic) -> Result<Vec<Member>> {
        let rows = self
            .query(&self.inner.sql.members, &[&topic.as_str()])
            .await?;
        let entries = rows.iter().map(read_entry).collect::<Result<Vec<_>>>()?;
        Ok(Member::group(entries))
    }

    async fn member(&self, topic: &Topic, member: &MemberId) -> Result<Option<Member>> {
        let rows = self
            .query(&self.inner.sql.member, &[&topic.as_str(), &member.as_str()])
            .await?;
        let entries = rows.iter().map(read_entry).collect::<Result<Vec<_>>>()?;
        Ok(Member::group(entries).pop())
    }

    async fn count(&self, topic: &Topic) -> Result<Counts> {
        let rows = self
            .query(&self.inner.sql.count, &[&topic.as_str()])
            .await?;
        Ok(match rows.first() {
            Some(row) => Counts {
                members: row.try_get::<_, i64>(0).map_err(db)?.max(0) as u64,
                connections: row.try_get::<_, i64>(1).map_err(db)?.max(0) as u64,
            },
            None => Counts::default(),
        })
    }

    async fn sweep(&self, topic: &Topic, older_than: Timestamp) -> Result<Vec<Departure>> {
        let rows = self
            .query(
                &self.inner.sql.sweep,
                &[&Some(topic.as_str()), &older_than.as_millis()],
            )
            .await?;
        read_departures(&rows, Reason::Expired)
    }

    async fn sweep_all(&self, older_than: Timestamp) -> Result<Vec<Departure>> {
        let rows = self
            .query(
                &self.inner.sql.sweep,
                &[&None::<&str>, &older_than.as_millis()],
            )
            .await?;
        read_departures(&rows, Reason::Expired)
    }

    async fn topics_of(&self, member: &MemberId) -> Result<Vec<Topic>> {
        let rows = self
            .query(&self.inner.sql.topics_of, &[&member.as_str()])
            .await?;
        rows.iter()
            .map(|row| Topic::new(row.try_get::<_, &str>(0).map_err(db)?).map_err(corrupt))
            .collect()
    }

    async fn subscribe(&self, topic: &Topic) -> Result<EventStream> {
        let (token, stream) = self.inner.listener.prepare(topic);
        self.query(&self.inner.sql.notify, &[&token]).await?;
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
}
