//! The pool and the statements: what calls and batches run on. Every wait
//! here is bounded by the store's timeouts; a connection whose use did not
//! finish (timed out, or its caller went away) is discarded, never handed
//! to the next caller mid-transaction.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use deadpool_postgres::{Object, Pool};
use presence_core::{
    Departure, Entry, Error, Event, Meta, PresenceKey, Reason, Result, Timestamp, metrics,
};
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use crate::config::PostgresConfig;
use crate::errors::{self, BACKEND, db, failure};
use crate::{rows, wire};

/// How many times a call that lost a deadlock is run again. Each call is one
/// statement, so a call aborted by a deadlock changed nothing.
const DEADLOCK_RETRIES: usize = 5;

pub(crate) struct Db {
    pub(crate) pool: Pool,
    pub(crate) sql: Sql,
    /// The timeouts (and the names of their settings, for errors).
    pub(crate) config: PostgresConfig,
    /// Makes every NOTIFY payload of this store unique (see `wire`).
    pub(crate) payload_ids: PayloadIds,
}

pub(crate) struct PayloadIds {
    /// Tells this store's payloads from other stores' on the channel.
    pub(crate) nonce: u64,
    pub(crate) next: AtomicU64,
}

impl PayloadIds {
    pub(crate) fn new() -> Self {
        Self {
            nonce: std::hash::BuildHasher::hash_one(
                &std::collections::hash_map::RandomState::new(),
                std::process::id(),
            ),
            next: AtomicU64::new(0),
        }
    }

    fn next(&self) -> String {
        format!(
            "{:x}-{}",
            self.nonce,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }
}

/// Why a transaction did not commit.
pub(crate) enum Failed {
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

/// A pooled connection in use. Unless [`release`](Self::release)d after a
/// use that finished, dropping it takes the connection out of the pool and
/// closes it: its state (a transaction, a statement still running) is unknown.
pub(crate) struct Checkout(Option<Object>);

impl Checkout {
    fn client(&self) -> &Object {
        self.0
            .as_ref()
            .expect("a checkout holds its connection until dropped")
    }

    pub(crate) fn client_mut(&mut self) -> &mut Object {
        self.0
            .as_mut()
            .expect("a checkout holds its connection until dropped")
    }

    /// Hands the connection back to the pool: its last use finished.
    pub(crate) fn release(mut self) {
        drop(self.0.take());
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        if let Some(object) = self.0.take() {
            drop(Object::take(object));
        }
    }
}

/// One caller's join, as queued for a batch.
pub(crate) struct JoinRequest {
    pub(crate) key: PresenceKey,
    pub(crate) meta: Meta,
    pub(crate) now: i64,
    pub(crate) max_members: Option<i64>,
}

/// The database's answer to one join: outcome, joined_at, first_for_member.
pub(crate) type JoinAnswer = (String, Option<i64>, bool);

/// The statements, rendered once for the schema.
pub(crate) struct Sql {
    pub(crate) join_many: String,
    pub(crate) join_set: String,
    pub(crate) update: String,
    pub(crate) touch: String,
    pub(crate) notify: String,
    pub(crate) leave_many: String,
    pub(crate) leave_member: String,
    pub(crate) disconnect: String,
    pub(crate) sweep: String,
    pub(crate) sweep_plan: String,
    pub(crate) sweep_topics: String,
    pub(crate) members: String,
    pub(crate) member: String,
    pub(crate) count: String,
    pub(crate) topics_of: String,
    pub(crate) sync: String,
}

impl Sql {
    pub(crate) fn new(schema: &str) -> Self {
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
            // One scan of the table finds the expired entries' topics;
            // the pieces are cut from it.
            sweep_plan: render(
                "SELECT e.topic, count(*) FROM {s}.entries e WHERE e.last_seen_at < $1 \
                 GROUP BY e.topic ORDER BY e.topic",
            ),
            sweep_topics: render("SELECT * FROM {s}.sweep_topics($1, $2)"),
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

fn key_columns(keys: &[PresenceKey]) -> (Vec<&str>, Vec<&str>, Vec<&str>) {
    let topics = keys.iter().map(|k| k.topic.as_str()).collect();
    let members = keys.iter().map(|k| k.member.as_str()).collect();
    let connections = keys.iter().map(|k| k.connection.as_str()).collect();
    (topics, members, connections)
}

/// Ends a failed transaction, so the connection goes back to the pool
/// clean; a connection that cannot even do that is dropped by the pool.
async fn rollback(client: &tokio_postgres::Client) {
    let _ = client.batch_execute("ROLLBACK").await;
}

/// Runs `attempt` again when it lost a deadlock: a statement or
/// transaction aborted by one changed nothing.
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
                return Err(failure("lost a deadlock on every try"));
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

impl Db {
    /// A connection from the pool, within the pool's timeouts (also for a
    /// pool the app built without any).
    pub(crate) async fn checkout(&self) -> Result<Checkout> {
        let started = Instant::now();
        let bound = self.config.pool_wait_timeout
            + self
                .config
                .pool_create_timeout
                .max(self.config.pool_recycle_timeout);
        let object = match tokio::time::timeout(bound, self.pool.get()).await {
            Ok(Ok(object)) => object,
            Ok(Err(error)) => return Err(errors::pool(error, &self.config)),
            Err(_) => {
                return Err(errors::timeout(
                    "getting a pooled connection",
                    bound,
                    "pool_wait_timeout",
                ));
            }
        };
        metrics::pool_wait(BACKEND, started.elapsed());
        Ok(Checkout(Some(object)))
    }

    /// Runs `work` on `checkout` within `call_timeout`; the connection goes
    /// back to the pool only if `work` finished.
    async fn bounded<T>(
        &self,
        checkout: Checkout,
        work: impl AsyncFnOnce(&Object) -> Result<T, Failed>,
    ) -> Result<T, Failed> {
        let after = self.config.call_timeout;
        match tokio::time::timeout(after, work(checkout.client())).await {
            Ok(result) => {
                checkout.release();
                result
            }
            Err(_) => Err(Failed::Error(errors::timeout(
                "waiting for the server's answer",
                after,
                "call_timeout",
            ))),
        }
    }

    /// Runs one statement on its own (no explicit transaction: one round
    /// trip). For calls that emit no events.
    pub(crate) async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>> {
        retry_deadlocks(|| async {
            let checkout = self.checkout().await?;
            self.bounded(checkout, async |client| {
                let statement = client.prepare_cached(sql).await?;
                Ok(client.query(&statement, params).await?)
            })
            .await
        })
        .await
    }

    /// Runs `sql` in a transaction, turns its rows into the call's result
    /// and events, NOTIFYs the events in the same transaction and commits:
    /// the events go out on commit, in commit order, or not at all.
    pub(crate) async fn transact<T>(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        outcome: impl Fn(&[Row]) -> Result<(T, Vec<Event>)>,
    ) -> Result<T> {
        retry_deadlocks(|| async {
            let checkout = self.checkout().await?;
            self.bounded(checkout, async |client| {
                self.try_transact(client, sql, params, &outcome).await
            })
            .await
        })
        .await
    }

    async fn try_transact<T>(
        &self,
        client: &Object,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        outcome: &impl Fn(&[Row]) -> Result<(T, Vec<Event>)>,
    ) -> Result<T, Failed> {
        let started = Instant::now();
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
                rollback(client).await;
                return Err(error.into());
            }
        };
        let (value, events) = match outcome(&rows) {
            Ok(done) => done,
            Err(error) => {
                rollback(client).await;
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
        metrics::commit(BACKEND, started.elapsed());
        Ok(value)
    }

    /// Many callers' joins in one statement; an answer per request, in order.
    pub(crate) async fn join_batch(&self, requests: Vec<JoinRequest>) -> Result<Vec<JoinAnswer>> {
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
                return Err(failure("a join batch got a wrong number of answers"));
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
    pub(crate) async fn touch_batch(&self, keys: &[PresenceKey], now: i64) -> Result<Vec<bool>> {
        let (topics, members, connections) = key_columns(keys);
        let rows = self
            .query(&self.sql.touch, &[&topics, &members, &connections, &now])
            .await?;
        let touched: HashSet<(&str, &str, &str)> = rows
            .iter()
            .map(|row| (row.get(0), row.get(1), row.get(2)))
            .collect();
        let present: Vec<bool> = keys
            .iter()
            .map(|k| {
                touched.contains(&(k.topic.as_str(), k.member.as_str(), k.connection.as_str()))
            })
            .collect();
        let absent = present.iter().filter(|p| !**p).count();
        metrics::touched(BACKEND, keys.len(), absent);
        tracing::trace!(keys = keys.len(), absent, "postgres touch");
        Ok(present)
    }

    /// Many callers' leaves in one statement; a departure (or none) per key.
    pub(crate) async fn leave_batch(
        &self,
        keys: Vec<PresenceKey>,
    ) -> Result<Vec<Option<Departure>>> {
        let (topics, members, connections) = key_columns(&keys);
        let answers = self
            .transact(
                &self.sql.leave_many,
                &[&topics, &members, &connections],
                |rows| {
                    let mut answers: Vec<Option<Departure>> = vec![None; keys.len()];
                    let mut departed = Vec::with_capacity(rows.len());
                    for row in rows {
                        let i: i32 = row.try_get(7).map_err(db)?;
                        let Some(departure) = rows::departure(row, Reason::Left)? else {
                            continue;
                        };
                        departed.push(departure.clone());
                        let slot = answers.get_mut((i - 1) as usize).ok_or_else(|| {
                            failure("leave_many answered a request it was not given")
                        })?;
                        *slot = Some(departure);
                    }
                    Ok((answers, leave_events(&departed)))
                },
            )
            .await?;
        let departed: Vec<Departure> = answers.iter().flatten().cloned().collect();
        metrics::departed(BACKEND, &departed);
        Ok(answers)
    }

    /// A removal that returns the schema's `departure` rows.
    pub(crate) async fn remove(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        reason: Reason,
    ) -> Result<Vec<Departure>> {
        let departures = self
            .transact(sql, params, |rows| {
                let departures = rows::departures(rows, reason)?;
                if departures.len() < rows.len() {
                    tracing::warn!(
                        removed = rows.len() - departures.len(),
                        "removed stored entries whose ids are not valid, without reporting them"
                    );
                }
                let events = leave_events(&departures);
                Ok((departures, events))
            })
            .await?;
        metrics::departed(BACKEND, &departures);
        Ok(departures)
    }

    /// `sweep_all` in pieces of about `sweep_chunk` entries (whole topics
    /// each, in topic order), each piece a transaction of its own. One scan
    /// finds the topics with expired entries; each piece then removes,
    /// under its topics' locks, what is still expired there (a touch or a
    /// concurrent sweeper may have changed that meanwhile).
    pub(crate) async fn sweep_all(&self, older_than: i64) -> Result<Vec<Departure>> {
        let started = Instant::now();
        let plan = self.query(&self.sql.sweep_plan, &[&older_than]).await?;
        let mut pieces: Vec<Vec<String>> = Vec::new();
        let mut filled = usize::MAX;
        for row in &plan {
            let topic: String = row.try_get(0).map_err(db)?;
            let expired: i64 = row.try_get(1).map_err(db)?;
            if filled >= self.config.sweep_chunk {
                pieces.push(Vec::new());
                filled = 0;
            }
            pieces.last_mut().expect("a piece").push(topic);
            filled = filled.saturating_add(expired.max(0) as usize);
        }
        let mut swept = Vec::new();
        for topics in &pieces {
            let piece = self
                .remove(
                    &self.sql.sweep_topics,
                    &[topics, &older_than],
                    Reason::Expired,
                )
                .await?;
            tracing::debug!(
                topics = topics.len(),
                departures = piece.len(),
                "postgres sweep piece"
            );
            swept.extend(piece);
        }
        let took = started.elapsed();
        metrics::sweep(BACKEND, took);
        tracing::debug!(
            departures = swept.len(),
            pieces = pieces.len(),
            took_ms = took.as_secs_f64() * 1e3,
            "postgres sweep_all"
        );
        Ok(swept)
    }
}
