//! The store's side of the server: script calls, batches of joins,
//! touches and removals, the member index, sweeps; bounded in time.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::join_all;
use presence_core::{
    ConnectionId, Departure, Entry, Error, Joined, MemberId, Meta, PresenceKey, Reason, Result,
    SharedError, Timestamp, Topic, metrics,
};
use redis::{Script, Value};

use crate::config::RedisConfig;
use crate::conn::{BACKEND, Conn, bounded};
use crate::keys::{BUCKETS, Keys, bucket};
use crate::scripts::SCRIPTS;
use crate::shards::ShardMap;
use crate::wire::{self, Malformed};

/// How many per-topic sweeps (or bucket reads) run at once in `sweep_all`.
pub(crate) const SWEEP_CONCURRENCY: usize = 8;

/// The most member index changes per script call, so that a mass expiry's
/// second step never holds the server long.
const INDEX_PIECE: usize = 1_000;

/// A random entry token: 53 bits (exact in a sorted set's score), never 0.
pub(crate) fn random_token() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(NEXT.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    (hasher.finish() & ((1 << 53) - 1)).max(1)
}

/// The connection and what every call needs.
pub(crate) struct Db {
    pub(crate) config: RedisConfig,
    pub(crate) keys: Keys,
    pub(crate) cluster: bool,
    pub(crate) publish: &'static str,
    pub(crate) conn: RwLock<Option<Conn>>,
    pub(crate) shards: ShardMap,
}

/// One caller's join, as queued for a batch.
pub(crate) struct JoinRequest {
    pub(crate) key: PresenceKey,
    pub(crate) meta: Meta,
    pub(crate) now: i64,
    pub(crate) max_members: Option<u32>,
    pub(crate) token: u64,
}

/// The join script's answer for one join: outcome, joined_at,
/// first_for_member, the entry's token.
type JoinOutcome = (Vec<u8>, i64, bool, u64);

/// A script call under construction.
#[derive(Default)]
pub(crate) struct Call {
    pub(crate) keys: Vec<String>,
    pub(crate) args: Vec<Vec<u8>>,
}

impl Call {
    pub(crate) fn arg(&mut self, arg: impl fmt::Display) -> &mut Self {
        self.args.push(arg.to_string().into_bytes());
        self
    }

    pub(crate) fn bytes(&mut self, arg: Vec<u8>) -> &mut Self {
        self.args.push(arg);
        self
    }
}

/// The topics of one batched script call, numbered from 1 in order of first
/// use.
#[derive(Default)]
pub(crate) struct Topics {
    list: Vec<Topic>,
    numbers: HashMap<Topic, usize>,
}

impl Topics {
    fn number(&mut self, topic: &Topic) -> usize {
        if let Some(n) = self.numbers.get(topic) {
            return *n;
        }
        self.list.push(topic.clone());
        self.numbers.insert(topic.clone(), self.list.len());
        self.list.len()
    }

    /// The call's keys (six per topic) and its topic header arguments:
    /// n, then the names.
    fn add_to(&self, keys: &Keys, call: &mut Call) {
        for topic in &self.list {
            call.keys.extend(keys.topic(topic));
        }
        call.arg(self.list.len());
        for topic in &self.list {
            call.arg(topic);
        }
    }
}

/// The distinct keys of one topic that one touch batch stamps with one
/// time: a `ZADD` of their fields.
struct TouchStamp<'a> {
    topic: &'a Topic,
    now: i64,
    fields: Vec<Vec<u8>>,
}

/// `member\0connection`.
pub(crate) fn field(member: &str, connection: &str) -> Vec<u8> {
    let mut field = Vec::with_capacity(member.len() + connection.len() + 1);
    field.extend_from_slice(member.as_bytes());
    field.push(0);
    field.extend_from_slice(connection.as_bytes());
    field
}

/// `connection\0topic`: an element of a member's index.
pub(crate) fn element(connection: &str, topic: &str) -> Vec<u8> {
    field(connection, topic)
}

/// One change to a member's index: set `element` to `token`, or (with
/// `expected`) change it only while it still carries `expected`; a new
/// token of 0 removes it.
pub(crate) struct IndexChange {
    pub(crate) member: MemberId,
    pub(crate) element: Vec<u8>,
    pub(crate) expected: Option<u64>,
    pub(crate) token: u64,
}

impl Db {
    pub(crate) fn conn(&self) -> Result<Conn> {
        self.conn
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(Error::Closed { backend: BACKEND })
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.config.command_timeout
    }

    pub(crate) fn now(&self) -> i64 {
        self.config.clock.now().as_millis()
    }

    /// The shard group of an id: everything on one server is one group; on
    /// a cluster, each bucket is one (its keys share a slot).
    pub(crate) fn group(&self, id: &str) -> u32 {
        if self.cluster { bucket(id) } else { 0 }
    }

    /// Runs a script (by SHA, loading it on NOSCRIPT), bounded in time.
    pub(crate) async fn run(
        &self,
        what: &'static str,
        script: &Script,
        call: Call,
    ) -> Result<Value> {
        let mut invocation = script.prepare_invoke();
        for key in &call.keys {
            invocation.key(key);
        }
        for arg in &call.args {
            invocation.arg(arg.as_slice());
        }
        self.invoke(what, &invocation).await
    }

    /// Runs a prepared script call, bounded in time.
    async fn invoke(
        &self,
        what: &'static str,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<Value> {
        let mut conn = self.conn()?;
        bounded(
            what,
            self.timeout(),
            invocation.invoke_async::<Value>(&mut conn),
        )
        .await
    }

    /// Runs one plain command, bounded in time.
    pub(crate) async fn command(&self, what: &'static str, cmd: redis::Cmd) -> Result<Value> {
        let mut conn = self.conn()?;
        bounded(what, self.timeout(), cmd.query_async::<Value>(&mut conn)).await
    }

    /// Runs a pipeline of plain commands, bounded in time; an answer per
    /// command.
    async fn pipeline(&self, what: &'static str, pipe: &redis::Pipeline) -> Result<Vec<Value>> {
        let mut conn = self.conn()?;
        bounded(
            what,
            self.timeout(),
            pipe.query_async::<Vec<Value>>(&mut conn),
        )
        .await
    }

    /// Many callers' joins: one script call per server (per node on a
    /// cluster), then each entry's member index; an answer per request, in
    /// order.
    pub(crate) async fn join_batch(&self, requests: Vec<JoinRequest>) -> Vec<Result<Joined>> {
        let started = Instant::now();
        let groups = self.join_groups(&requests).await;
        let calls = groups.into_iter().map(|members| {
            let requests = &requests;
            async move {
                let answers = self.join_rows(requests, &members).await;
                (members, answers)
            }
        });
        let mut outcomes: Vec<Option<Result<JoinOutcome>>> =
            (0..requests.len()).map(|_| None).collect();
        for (members, answers) in join_all(calls).await {
            match answers {
                Ok(rows) => {
                    if rows.len() != members.len() {
                        let error = Error::backend(BACKEND, Malformed("join")).share();
                        for i in members {
                            outcomes[i] = Some(Err(error.error()));
                        }
                        continue;
                    }
                    for (i, row) in members.into_iter().zip(rows) {
                        let row = match row {
                            Ok(row) => wire::array(row),
                            Err(error) => {
                                outcomes[i] = Some(Err(error));
                                continue;
                            }
                        };
                        let parsed = match row.as_slice() {
                            [outcome, joined, first, token] => wire::bytes(outcome)
                                .zip(wire::int(joined))
                                .zip(wire::int(first))
                                .zip(wire::int(token))
                                .map(|(((o, j), f), t)| (o.to_vec(), j, f == 1, t as u64)),
                            _ => None,
                        };
                        outcomes[i] =
                            Some(parsed.ok_or_else(|| Error::backend(BACKEND, Malformed("join"))));
                    }
                }
                Err(error) => {
                    let error = error.share();
                    for i in members {
                        outcomes[i] = Some(Err(error.error()));
                    }
                }
            }
        }
        // The second step (on a cluster; one server did it in the script):
        // every entry joined is in its member's index.
        let mut changes = Vec::new();
        let mut changed = Vec::new();
        for (i, outcome) in outcomes.iter().enumerate() {
            if let Some(Ok((outcome, _, _, token))) = outcome
                && outcome != b"full"
                && self.cluster
            {
                let key = &requests[i].key;
                changes.push(IndexChange {
                    member: key.member.clone(),
                    element: element(&key.connection, &key.topic),
                    expected: None,
                    token: *token,
                });
                changed.push(i);
            }
        }
        let indexed = self.change_index(changes).await;
        for (i, result) in changed.into_iter().zip(indexed) {
            if let Err(error) = result {
                outcomes[i] = Some(Err(error));
            }
        }
        metrics::commit(BACKEND, started.elapsed());
        requests
            .into_iter()
            .zip(outcomes)
            .map(|(request, outcome)| {
                let (outcome, joined_at, first_for_member, _) =
                    outcome.unwrap_or_else(|| Err(Error::backend(BACKEND, Malformed("join"))))?;
                if outcome == b"full" {
                    metrics::join_refused(BACKEND);
                    return Err(Error::TopicFull {
                        topic: request.key.topic,
                        max_members: request.max_members.unwrap_or(0),
                    });
                }
                let joined = Joined {
                    entry: Entry {
                        key: request.key,
                        meta: request.meta,
                        joined_at: Timestamp::from_millis(joined_at),
                        last_seen_at: Timestamp::from_millis(request.now),
                    },
                    first_for_member,
                    was_present: outcome == b"rejoined",
                };
                metrics::joined(BACKEND, &joined);
                Ok(joined)
            })
            .collect()
    }

    /// A join batch's requests grouped by script call: all of them on one
    /// server; on a cluster, those of the buckets one node serves (by the
    /// slot map, read again when older than a few seconds; one bucket per
    /// call when it cannot be read).
    async fn join_groups(&self, requests: &[JoinRequest]) -> Vec<Vec<usize>> {
        if !self.cluster {
            return vec![(0..requests.len()).collect()];
        }
        let nodes = match self.shards.nodes() {
            Some(nodes) => Some(nodes),
            None => {
                self.node_buckets().await;
                self.shards.nodes()
            }
        };
        let mut groups: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for (i, request) in requests.iter().enumerate() {
            let b = bucket(&request.key.topic);
            let group = match nodes.as_deref().and_then(|nodes| nodes.get(b as usize)) {
                Some(node) => u64::from(*node),
                None => (1 << 32) + u64::from(b),
            };
            groups.entry(group).or_default().push(i);
        }
        groups.into_values().collect()
    }

    /// The join script's rows for the requests at `positions`, in order:
    /// one call. On a cluster, a call spanning several buckets that the
    /// node refuses (a stale slot map: it changed nothing, see join.lua)
    /// is made again bucket by bucket, each bucket's joins getting that
    /// call's rows or its error.
    async fn join_rows(
        &self,
        requests: &[JoinRequest],
        positions: &[usize],
    ) -> Result<Vec<Result<Value>>> {
        let first = bucket(&requests[positions[0]].key.topic);
        let spread = self.cluster
            && positions
                .iter()
                .any(|&i| bucket(&requests[i].key.topic) != first);
        let call = self.join_call(requests, positions, spread);
        match self.run("join", &SCRIPTS.join, call).await {
            Ok(rows) => Ok(wire::array(rows).into_iter().map(Ok).collect()),
            Err(error) if spread && not_local(&error) => {
                tracing::debug!(error = %error.chain(), "a join call grouped by node was refused; joining bucket by bucket");
                self.shards.invalidate();
                let mut by_bucket: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
                for (at, &i) in positions.iter().enumerate() {
                    by_bucket
                        .entry(bucket(&requests[i].key.topic))
                        .or_default()
                        .push(at);
                }
                let calls = by_bucket.into_values().map(|ats| async move {
                    let here: Vec<usize> = ats.iter().map(|&at| positions[at]).collect();
                    let call = self.join_call(requests, &here, false);
                    let rows = self.run("join", &SCRIPTS.join, call).await;
                    (ats, rows)
                });
                let mut rows: Vec<Result<Value>> = (0..positions.len())
                    .map(|_| Err(Error::backend(BACKEND, Malformed("join"))))
                    .collect();
                for (ats, answer) in join_all(calls).await {
                    match answer.map(wire::array) {
                        Ok(answer) if answer.len() == ats.len() => {
                            for (at, row) in ats.into_iter().zip(answer) {
                                rows[at] = Ok(row);
                            }
                        }
                        Ok(_) => {}
                        Err(error) => {
                            let error = error.share();
                            for at in ats {
                                rows[at] = Err(error.error());
                            }
                        }
                    }
                }
                Ok(rows)
            }
            Err(error) => Err(error),
        }
    }

    /// The join script call for the requests at `positions`; `spread`: the
    /// topics' keys travel in ARGV (a cluster node's buckets, see join.lua).
    fn join_call(&self, requests: &[JoinRequest], positions: &[usize], spread: bool) -> Call {
        let mut topics = Topics::default();
        let mut joins = Call::default();
        // One server: the script writes the member indexes too.
        let mut members_here: Vec<&MemberId> = Vec::new();
        let mut member_numbers: HashMap<&MemberId, usize> = HashMap::new();
        for &i in positions {
            let r = &requests[i];
            let u = if self.cluster {
                0
            } else {
                *member_numbers.entry(&r.key.member).or_insert_with(|| {
                    members_here.push(&r.key.member);
                    members_here.len()
                })
            };
            joins
                .arg(topics.number(&r.key.topic))
                .arg(&r.key.member)
                .arg(&r.key.connection)
                .arg(r.meta.to_json())
                .arg(r.now)
                .arg(r.token)
                .arg(r.max_members.map_or(-1, i64::from))
                .arg(u);
        }
        let mut call = Call::default();
        call.arg(self.publish);
        topics.add_to(&self.keys, &mut call);
        if spread {
            let keys = std::mem::take(&mut call.keys);
            call.arg("A");
            call.keys.push(keys[0].clone());
            call.args.extend(keys.into_iter().map(String::into_bytes));
        } else {
            call.arg("K");
            call.keys
                .extend(members_here.iter().map(|m| self.keys.member(m)));
        }
        call.args.append(&mut joins.args);
        call
    }

    /// Applies index changes, one script call per member group; a result
    /// per change, in order.
    pub(crate) async fn change_index(&self, changes: Vec<IndexChange>) -> Vec<Result<()>> {
        let mut groups: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (i, change) in changes.iter().enumerate() {
            groups
                .entry(self.group(&change.member))
                .or_default()
                .push(i);
        }
        // Pieces of at most INDEX_PIECE changes, each one script call, a
        // member's changes together (the script reads one member's elements
        // at once). Changes of one kind only per call (set, or swap).
        let mut pieces = Vec::new();
        for positions in groups.into_values() {
            // Grouped by kind, then by member in order of first change
            // (no sort: a mass expiry brings a hundred thousand changes).
            let mut runs: HashMap<(bool, &MemberId), usize> = HashMap::new();
            let mut grouped: Vec<Vec<usize>> = Vec::new();
            for i in positions {
                let change = &changes[i];
                let run = *runs
                    .entry((change.expected.is_some(), &change.member))
                    .or_insert_with(|| {
                        grouped.push(Vec::new());
                        grouped.len() - 1
                    });
                grouped[run].push(i);
            }
            grouped.sort_by_key(|run| changes[run[0]].expected.is_some());
            let ordered: Vec<usize> = grouped.into_iter().flatten().collect();
            for kind in ordered
                .chunk_by(|&a, &b| changes[a].expected.is_some() == changes[b].expected.is_some())
            {
                pieces.extend(kind.chunks(INDEX_PIECE).map(<[usize]>::to_vec));
            }
        }
        let calls = pieces.into_iter().map(|positions| {
            let changes = &changes;
            async move {
                let swap = changes[positions[0]].expected.is_some();
                let mut invocation = if swap {
                    SCRIPTS.unindex.prepare_invoke()
                } else {
                    SCRIPTS.index.prepare_invoke()
                };
                let removing = positions.iter().all(|&i| changes[i].token == 0);
                if swap {
                    invocation.arg(if removing { "1" } else { "0" });
                }
                // One key per member, then its changes together.
                let members = positions.chunk_by(|&a, &b| changes[a].member == changes[b].member);
                for (n, run) in members.enumerate() {
                    invocation.key(self.keys.member(&changes[run[0]].member));
                    if swap {
                        invocation.arg(n + 1).arg(run.len());
                    }
                    for &i in run {
                        let change = &changes[i];
                        if !swap {
                            invocation.arg(n + 1);
                        }
                        invocation.arg(change.element.as_slice());
                        if let Some(expected) = change.expected {
                            invocation.arg(expected);
                        }
                        if !swap || !removing {
                            invocation.arg(change.token);
                        }
                    }
                }
                let done = self.invoke("index", &invocation).await.map(|_| ());
                (positions, done)
            }
        });
        let mut results: Vec<Result<()>> = (0..changes.len()).map(|_| Ok(())).collect();
        for (positions, done) in join_all(calls).await {
            if let Err(error) = done {
                let error = error.share();
                for i in positions {
                    results[i] = Err(error.error());
                }
            }
        }
        results
    }

    /// Takes removed entries out of their members' indexes. Best effort: an
    /// element left behind (a failure here, or a process that died) is
    /// found stale and removed by the next `topics_of` or `disconnect` of
    /// its member.
    pub(crate) async fn unindex(
        &self,
        removed: impl IntoIterator<Item = (MemberId, Vec<u8>, u64)>,
    ) {
        let changes: Vec<IndexChange> = removed
            .into_iter()
            .map(|(member, element, token)| IndexChange {
                member,
                element,
                expected: Some(token),
                token: 0,
            })
            .collect();
        if changes.is_empty() {
            return;
        }
        for result in self.change_index(changes).await {
            if let Err(error) = result {
                tracing::warn!(error = %error.chain(), "removing member index elements failed; they are healed later");
                return;
            }
        }
    }

    /// Removes given connections (a leave batch, or a disconnect's step),
    /// one script call per shard group; each key's departure, the first
    /// request of a key getting it.
    pub(crate) async fn remove_keys(
        &self,
        keys: &[PresenceKey],
        reason: Reason,
    ) -> Vec<Result<Option<Departure>>> {
        let kind = match reason {
            Reason::Disconnected => "D",
            _ => "L",
        };
        let mut groups: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (i, key) in keys.iter().enumerate() {
            groups.entry(self.group(&key.topic)).or_default().push(i);
        }
        let calls = groups.into_values().map(|positions| async move {
            let mut topics = Topics::default();
            let mut pairs = Call::default();
            for &i in &positions {
                let key = &keys[i];
                pairs
                    .arg(topics.number(&key.topic))
                    .bytes(field(&key.member, &key.connection));
            }
            let mut call = Call::default();
            call.arg(self.publish).arg(kind);
            topics.add_to(&self.keys, &mut call);
            call.args.append(&mut pairs.args);
            let rows = self.run("leave", &SCRIPTS.leave, call).await;
            (positions, rows.map(|rows| (topics.list, rows)))
        });
        let mut results: Vec<Result<Option<Departure>>> =
            (0..keys.len()).map(|_| Ok(None)).collect();
        let mut removed = Vec::new();
        for (positions, rows) in join_all(calls).await {
            let answer = rows.and_then(|(topics, rows)| {
                wire::removal_answer(&wire::array(rows), &topics)
                    .ok_or_else(|| Error::backend(BACKEND, Malformed("leave")))
            });
            match answer {
                Ok(mut departures) => {
                    wire::order_departures(&mut departures);
                    let mut by_key: HashMap<PresenceKey, Departure> = HashMap::new();
                    for (departure, token) in departures {
                        let key = &departure.entry.key;
                        removed.push((
                            key.member.clone(),
                            element(&key.connection, &key.topic),
                            token,
                        ));
                        by_key.insert(key.clone(), departure);
                    }
                    for i in positions {
                        results[i] = Ok(by_key.remove(&keys[i]));
                    }
                }
                Err(error) => {
                    let error = error.share();
                    for i in positions {
                        results[i] = Err(error.error());
                    }
                }
            }
        }
        self.unindex(removed).await;
        results
    }

    /// The departures of removal scripts' answers (see
    /// [`wire::removal_answer`]), their entries taken out of the member
    /// indexes (the second step); in the contract's order.
    pub(crate) async fn finish_removal(
        &self,
        mut removed: Vec<(Departure, u64)>,
    ) -> Vec<Departure> {
        self.unindex(removed.iter().map(|(departure, token)| {
            let key = &departure.entry.key;
            (
                key.member.clone(),
                element(&key.connection, &key.topic),
                *token,
            )
        }))
        .await;
        wire::order_departures(&mut removed);
        let departures: Vec<Departure> = removed.into_iter().map(|(d, _)| d).collect();
        metrics::departed(BACKEND, &departures);
        departures
    }

    /// Refreshes `last_seen_at` of keys; whether each was present.
    ///
    /// No script: one plain `ZADD s XX CH` per topic and time, pipelined
    /// (one pipeline per shard group). `XX` never creates an entry, so the
    /// command can only refresh entries that exist, whatever runs between
    /// the commands. When its count of changed elements equals the number
    /// of distinct keys sent, every one was present; otherwise (some are
    /// absent, or were stamped at this very millisecond already) a
    /// `ZMSCORE` of that topic says which are present.
    pub(crate) async fn touch_batch(&self, keys: &[(&PresenceKey, i64)]) -> Vec<Result<bool>> {
        let mut stamps: Vec<TouchStamp<'_>> = Vec::new();
        let mut stamp_of: HashMap<(&Topic, i64), usize> = HashMap::new();
        let mut field_of: HashMap<(&PresenceKey, i64), usize> = HashMap::with_capacity(keys.len());
        // Each key's (stamp, field); a repeated key shares its first's.
        let mut slots = Vec::with_capacity(keys.len());
        for &(key, now) in keys {
            let s = *stamp_of.entry((&key.topic, now)).or_insert_with(|| {
                stamps.push(TouchStamp {
                    topic: &key.topic,
                    now,
                    fields: Vec::new(),
                });
                stamps.len() - 1
            });
            let f = *field_of.entry((key, now)).or_insert_with(|| {
                let fields = &mut stamps[s].fields;
                fields.push(field(&key.member, &key.connection));
                fields.len() - 1
            });
            slots.push((s, f));
        }
        let mut groups: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (s, stamp) in stamps.iter().enumerate() {
            groups.entry(self.group(stamp.topic)).or_default().push(s);
        }
        let stamps = &stamps;
        let calls = groups.into_values().map(|group| async move {
            let answer = self.touch_stamps(stamps, &group).await;
            (group, answer)
        });
        let mut present: Vec<std::result::Result<Vec<bool>, SharedError>> =
            stamps.iter().map(|_| Ok(Vec::new())).collect();
        for (group, answer) in join_all(calls).await {
            match answer {
                Ok(flags) => {
                    for (s, flags) in group.into_iter().zip(flags) {
                        present[s] = Ok(flags);
                    }
                }
                Err(error) => {
                    let error = error.share();
                    for s in group {
                        present[s] = Err(error.clone());
                    }
                }
            }
        }
        slots
            .into_iter()
            .map(|(s, f)| match &present[s] {
                Ok(flags) => flags
                    .get(f)
                    .copied()
                    .ok_or_else(|| Error::backend(BACKEND, Malformed("touch"))),
                Err(error) => Err(error.error()),
            })
            .collect()
    }

    /// `touch_batch` for the stamps of one shard group, in one pipeline
    /// (and a second one for the stamps whose count fell short): per
    /// stamp, whether each of its fields was present.
    async fn touch_stamps(
        &self,
        stamps: &[TouchStamp<'_>],
        group: &[usize],
    ) -> Result<Vec<Vec<bool>>> {
        let keys: Vec<String> = group
            .iter()
            .map(|&s| self.keys.last_seen(stamps[s].topic))
            .collect();
        let mut pipe = redis::pipe();
        for (&s, key) in group.iter().zip(&keys) {
            let stamp = &stamps[s];
            let now = stamp.now.to_string();
            let mut cmd = redis::cmd("ZADD");
            cmd.arg(key.as_str()).arg("XX").arg("CH");
            for f in &stamp.fields {
                cmd.arg(now.as_str()).arg(f.as_slice());
            }
            pipe.add_command(cmd);
        }
        let changed = self.pipeline("touch", &pipe).await?;
        if changed.len() != group.len() {
            return Err(Error::backend(BACKEND, Malformed("touch")));
        }
        let mut present: Vec<Vec<bool>> = Vec::with_capacity(group.len());
        let mut unsure = Vec::new();
        for (j, (&s, count)) in group.iter().zip(&changed).enumerate() {
            let sent = stamps[s].fields.len();
            if wire::int(count).and_then(|n| usize::try_from(n).ok()) == Some(sent) {
                present.push(vec![true; sent]);
            } else {
                present.push(Vec::new());
                unsure.push(j);
            }
        }
        if unsure.is_empty() {
            return Ok(present);
        }
        let mut pipe = redis::pipe();
        for &j in &unsure {
            let mut cmd = redis::cmd("ZMSCORE");
            cmd.arg(keys[j].as_str());
            for f in &stamps[group[j]].fields {
                cmd.arg(f.as_slice());
            }
            pipe.add_command(cmd);
        }
        let scores = self.pipeline("touch", &pipe).await?;
        if scores.len() != unsure.len() {
            return Err(Error::backend(BACKEND, Malformed("touch")));
        }
        for (j, scores) in unsure.into_iter().zip(scores) {
            let scores = wire::array(scores);
            if scores.len() != stamps[group[j]].fields.len() {
                return Err(Error::backend(BACKEND, Malformed("touch")));
            }
            present[j] = scores.iter().map(|v| !matches!(v, Value::Nil)).collect();
        }
        Ok(present)
    }

    /// Sweeps one topic, piece by piece: the departures with their
    /// entries' tokens, not yet ordered, the member indexes not yet changed
    /// (see `finish_removal`); with the error that stopped it, if one did
    /// (the pieces before it stay swept).
    pub(crate) async fn sweep_topic(
        &self,
        topic: &Topic,
        older_than: i64,
    ) -> (Vec<(Departure, u64)>, Result<()>) {
        let mut departures = Vec::new();
        loop {
            let mut call = Call::default();
            call.keys.extend(self.keys.topic(topic));
            call.arg(self.publish)
                .arg(topic)
                .arg(older_than)
                .arg(self.config.sweep_piece);
            let answer = match self.run("sweep", &SCRIPTS.sweep, call).await {
                Ok(answer) => wire::array(answer),
                Err(error) => return (departures, Err(error)),
            };
            let piece = answer.split_first().and_then(|(more, answer)| {
                let removed = wire::removal_answer(answer, std::slice::from_ref(topic))?;
                Some((wire::int(more) == Some(1), removed))
            });
            let Some((more, removed)) = piece else {
                return (departures, Err(Error::backend(BACKEND, Malformed("sweep"))));
            };
            departures.extend(removed);
            if !more {
                return (departures, Ok(()));
            }
        }
    }

    /// The topics whose bucket index says they may hold entries last seen
    /// before `older_than`.
    pub(crate) async fn due_topics(&self, older_than: i64) -> Result<Vec<Topic>> {
        let limit = 100_000;
        let read = |buckets: Vec<u32>| async move {
            let mut call = Call::default();
            call.keys.push(self.keys.index(buckets[0]));
            call.arg(older_than).arg(limit);
            for b in &buckets {
                call.arg(self.keys.index(*b));
            }
            let pairs = wire::array(self.run("due", &SCRIPTS.due, call).await?);
            Ok::<Vec<Topic>, Error>(
                pairs
                    .chunks(2)
                    .filter_map(|pair| {
                        let name = std::str::from_utf8(wire::bytes(pair.get(1)?)?).ok()?;
                        Topic::new(name).ok()
                    })
                    .collect(),
            )
        };
        if !self.cluster {
            return read((0..BUCKETS).collect()).await;
        }
        let groups = self.node_buckets().await;
        let mut topics = Vec::new();
        let mut reads = futures::stream::iter(groups.into_iter().map(|group| async move {
            match read(group.clone()).await {
                Ok(found) => Ok::<Vec<Topic>, Error>(found),
                Err(error) => {
                    tracing::debug!(error = %error.chain(), "a grouped read of bucket indexes failed; reading bucket by bucket");
                    // A stale map: the node refused buckets it does not
                    // serve. One call per bucket, each routed by its key.
                    self.shards.invalidate();
                    let mut found = Vec::new();
                    for b in group {
                        found.extend(read(vec![b]).await?);
                    }
                    Ok(found)
                }
            }
        }))
        .buffer_unordered(SWEEP_CONCURRENCY);
        while let Some(found) = reads.next().await {
            topics.extend(found?);
        }
        Ok(topics)
    }

    /// The buckets grouped by the cluster node serving them: the cached
    /// slot map, or a fresh one (one group per bucket when it cannot be
    /// read).
    async fn node_buckets(&self) -> Vec<Vec<u32>> {
        if let Some(groups) = self.shards.get() {
            return groups;
        }
        let slots = self
            .command(
                "reading the slot map",
                redis::cmd("CLUSTER").arg("SLOTS").to_owned(),
            )
            .await;
        match slots {
            Ok(slots) => self.shards.learn(slots),
            Err(_) => (0..BUCKETS).map(|b| vec![b]).collect(),
        }
    }

    /// The elements of a member's index: (connection, topic, token).
    pub(crate) async fn member_index(
        &self,
        member: &MemberId,
    ) -> Result<Vec<(ConnectionId, Topic, u64)>> {
        let mut cmd = redis::cmd("ZRANGE");
        cmd.arg(self.keys.member(member))
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES");
        let value = self.command("reading a member index", cmd).await?;
        // RESP3 answers pairs; RESP2 a flat list.
        let mut flat = Vec::new();
        for item in wire::array(value) {
            match item {
                Value::Array(pair) => flat.extend(pair),
                other => flat.push(other),
            }
        }
        Ok(flat
            .chunks(2)
            .filter_map(|pair| {
                let [element, score] = pair else { return None };
                let score = match score {
                    Value::Double(d) => *d as u64,
                    other => wire::int(other)? as u64,
                };
                let (connection, topic) = wire::split_field(wire::bytes(element)?);
                let connection = ConnectionId::new(std::str::from_utf8(connection).ok()?).ok()?;
                let topic = Topic::new(std::str::from_utf8(topic).ok()?).ok()?;
                Some((connection, topic, score))
            })
            .collect())
    }
}

/// Whether a cluster node refused a script because a key it was given is
/// not served there (a stale slot map).
fn not_local(error: &Error) -> bool {
    let chain = error.chain().to_string();
    chain.contains("non local key") || chain.contains("CROSSSLOT")
}

/// Loads the scripts the server (every node of a cluster) lacks, so calls
/// seldom pay for a NOSCRIPT (after a restart they still load on demand).
pub(crate) async fn load_scripts(conn: &Conn, timeout: Duration) -> Result<()> {
    let mut conn = conn.clone();
    let mut exists = redis::cmd("SCRIPT");
    exists.arg("EXISTS");
    for script in SCRIPTS.all() {
        exists.arg(script.get_hash());
    }
    let loaded = bounded(
        "checking scripts",
        timeout,
        exists.query_async::<Value>(&mut conn),
    )
    .await?;
    let loaded = wire::array(loaded);
    for (i, script) in SCRIPTS.all().into_iter().enumerate() {
        if loaded.get(i).and_then(wire::int) != Some(1) {
            bounded("loading a script", timeout, script.load_async(&mut conn)).await?;
        }
    }
    Ok(())
}
