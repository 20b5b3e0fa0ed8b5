//! Every statement the store runs, and the operations built from them. Values
//! are always bound; only the validated table prefix is written into SQL.

use std::collections::HashSet;

use presence_core::{
    ConnectionId, Counts, Departure, Entry, Error, Event, Joined, Member, MemberId, Meta,
    PresenceKey, Reason, Result, Timestamp, Topic,
};
use rusqlite::types::{Value, ValueRef};
use rusqlite::{Connection, OptionalExtension, Params, Row, params};

use crate::error::db;

const COLUMNS: &str = "topic, member, connection, meta, joined_at, last_seen_at";

/// What a removal returns: `COLUMNS`, then whether the member has no entry
/// left in the topic. SQLite evaluates it as each row is deleted, so of a
/// member's rows removed by one statement only the last may say so; a
/// member is gone if any of its rows does.
const REMOVED: &str = "topic, member, connection, meta, joined_at, last_seen_at, \
    NOT EXISTS (SELECT 1 FROM {p}entries AS other \
    WHERE other.topic = {p}entries.topic AND other.member = {p}entries.member)";

/// The statements, rendered once for a table prefix.
#[derive(Debug)]
pub(crate) struct Sql {
    select_entry: String,
    topic_members: String,
    insert_entry: String,
    refresh_entry: String,
    touch_entry: String,
    delete_entry: String,
    delete_member: String,
    delete_connection: String,
    sweep_topic: String,
    sweep_candidates: String,
    select_topic: String,
    select_member: String,
    count: String,
    topics_of: String,
}

impl Sql {
    pub(crate) fn new(prefix: &str) -> Self {
        let render = |template: &str| {
            template
                .replace("{removed}", REMOVED)
                .replace("{columns}", COLUMNS)
                .replace("{p}", prefix)
        };
        Self {
            // One row always: the entry's meta and joined_at (NULL when it
            // is absent) and whether the member has any connection.
            select_entry: render(
                "SELECT e.meta, e.joined_at, \
                 EXISTS (SELECT 1 FROM {p}entries WHERE topic = ?1 AND member = ?2) \
                 FROM (SELECT 1) LEFT JOIN {p}entries AS e \
                 ON e.topic = ?1 AND e.member = ?2 AND e.connection = ?3",
            ),
            topic_members: render("SELECT members FROM {p}topics WHERE topic = ?1"),
            insert_entry: render(
                "INSERT INTO {p}entries ({columns}) VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
            ),
            refresh_entry: render(
                "UPDATE {p}entries SET meta = ?4, last_seen_at = ?5 \
                 WHERE topic = ?1 AND member = ?2 AND connection = ?3 RETURNING joined_at",
            ),
            touch_entry: render(
                "UPDATE {p}entries SET last_seen_at = ?4 \
                 WHERE topic = ?1 AND member = ?2 AND connection = ?3",
            ),
            delete_entry: render(
                "DELETE FROM {p}entries \
                 WHERE topic = ?1 AND member = ?2 AND connection = ?3 RETURNING {removed}",
            ),
            delete_member: render(
                "DELETE FROM {p}entries WHERE topic = ?1 AND member = ?2 RETURNING {removed}",
            ),
            delete_connection: render(
                "DELETE FROM {p}entries WHERE member = ?1 AND connection = ?2 RETURNING {removed}",
            ),
            sweep_topic: render(
                "DELETE FROM {p}entries WHERE topic = ?1 AND last_seen_at < ?2 RETURNING {removed}",
            ),
            // The topics of the oldest expired entries, through the
            // `last_seen_at` index (which holds the topic: the table's key).
            sweep_candidates: render(
                "SELECT topic FROM {p}entries WHERE last_seen_at < ?1 \
                 ORDER BY last_seen_at LIMIT ?2",
            ),
            select_topic: render("SELECT {columns} FROM {p}entries WHERE topic = ?1"),
            select_member: render(
                "SELECT {columns} FROM {p}entries WHERE topic = ?1 AND member = ?2",
            ),
            count: render("SELECT members, connections FROM {p}topics WHERE topic = ?1"),
            topics_of: render(
                "SELECT DISTINCT topic FROM {p}entries WHERE member = ?1 ORDER BY topic",
            ),
        }
    }
}

/// The text of a column, if it holds valid UTF-8 text.
fn text<'r>(row: &'r Row<'_>, column: usize) -> Result<Option<&'r str>> {
    Ok(match row.get_ref(column).map_err(db)? {
        ValueRef::Text(bytes) => std::str::from_utf8(bytes).ok(),
        _ => None,
    })
}

/// A stored row as a log line shows it: its columns as SQLite holds them.
fn describe(row: &Row<'_>) -> String {
    let column = |i: usize| match row.get_ref(i) {
        Ok(ValueRef::Text(bytes)) => format!("{:?}", String::from_utf8_lossy(bytes)),
        Ok(other) => format!("{:?}", other.data_type()),
        Err(_) => "?".to_owned(),
    };
    format!("({}, {}, {})", column(0), column(1), column(2))
}

/// An entry from a row of `COLUMNS`; `Ok(None)` for a row whose ids or
/// timestamps are not valid presence data (damage, a hand edit), which
/// every read skips. A meta that cannot be read reads as `{}`, with a
/// warning (`Meta::from_stored_json`).
fn read_entry(row: &Row<'_>) -> Result<Option<Entry>> {
    let ids = (text(row, 0)?, text(row, 1)?, text(row, 2)?);
    let key = match ids {
        (Some(t), Some(m), Some(c)) => PresenceKey::new(t, m, c).ok(),
        _ => None,
    };
    let stamp = |i: usize| -> Result<Option<Timestamp>> {
        Ok(match row.get_ref(i).map_err(db)? {
            ValueRef::Integer(millis) => Some(Timestamp::from_millis(millis)),
            _ => None,
        })
    };
    let (Some(key), Some(joined_at), Some(last_seen_at)) = (key, stamp(4)?, stamp(5)?) else {
        return Ok(None);
    };
    let meta = Meta::from_stored_json(text(row, 3)?.unwrap_or(""), &key);
    Ok(Some(Entry {
        key,
        meta,
        joined_at,
        last_seen_at,
    }))
}

/// Every entry a `COLUMNS` query yields, skipping (with a warning) rows
/// that are not valid presence data.
fn entries(conn: &Connection, sql: &str, params: impl Params) -> Result<Vec<Entry>> {
    let rows = read_rows(conn, sql, params, |row| {
        let entry = read_entry(row)?;
        if entry.is_none() {
            tracing::warn!(
                row = %describe(row),
                "presence-sqlite: a stored entry's ids or times are not valid presence data; reads skip it"
            );
        }
        Ok(entry)
    })?;
    Ok(rows.into_iter().flatten().collect())
}

/// Runs `sql` (a cached statement) and reads every row it yields.
fn read_rows<T>(
    conn: &Connection,
    sql: &str,
    params: impl Params,
    mut read: impl FnMut(&Row<'_>) -> Result<T>,
) -> Result<Vec<T>> {
    let mut statement = conn.prepare_cached(sql).map_err(db)?;
    let mut rows = statement.query(params).map_err(db)?;
    let mut read_all = Vec::new();
    while let Some(row) = rows.next().map_err(db)? {
        read_all.push(read(row)?);
    }
    Ok(read_all)
}

/// What a join finds of an entry already there: its meta as text (`None`
/// if it is not text at all) and its `joined_at` (`None` if not a number).
type Stored = (Option<String>, Option<i64>);

/// `join` and `join_limited`.
pub(crate) fn join(
    conn: &Connection,
    sql: &Sql,
    key: &PresenceKey,
    meta: Meta,
    max_members: Option<u32>,
    now: i64,
) -> Result<(Joined, Vec<Event>)> {
    let (t, m, c) = (
        key.topic.as_str(),
        key.member.as_str(),
        key.connection.as_str(),
    );
    let meta_json = meta.to_json();
    // The old meta as text (`None` if it is not text at all), and joined_at
    // when the entry exists; a joined_at that is not a number (damage) is
    // replaced by the re-join's time.
    let (existing, present): (Option<Stored>, bool) = conn
        .prepare_cached(&sql.select_entry)
        .and_then(|mut s| {
            s.query_row(params![t, m, c], |r| {
                let exists = !matches!(r.get_ref(0)?, ValueRef::Null);
                let old_meta = match r.get_ref(0)? {
                    ValueRef::Text(bytes) => std::str::from_utf8(bytes).ok().map(str::to_owned),
                    _ => None,
                };
                let joined_at = match r.get_ref(1)? {
                    ValueRef::Integer(millis) => Some(millis),
                    _ => None,
                };
                Ok((exists.then_some((old_meta, joined_at)), r.get(2)?))
            })
        })
        .map_err(db)?;
    if let Some((old_json, joined_at)) = existing {
        let joined_at = joined_at.unwrap_or(now);
        conn.prepare_cached(&sql.refresh_entry)
            .and_then(|mut s| s.query_row(params![t, m, c, meta_json, now], |_| Ok(())))
            .map_err(db)?;
        // An old meta that cannot be read read as {} (and still does for
        // anyone who read it): compare with that.
        let changed = match &old_json {
            Some(old) => old != &meta_json && Meta::from_stored_json(old, key) != meta,
            None => !meta.is_empty(),
        };
        let entry = Entry {
            key: key.clone(),
            meta,
            joined_at: Timestamp::from_millis(joined_at),
            last_seen_at: Timestamp::from_millis(now),
        };
        let events = if changed {
            vec![Event::Update {
                entry: entry.clone(),
            }]
        } else {
            Vec::new()
        };
        let joined = Joined {
            entry,
            first_for_member: false,
            was_present: true,
        };
        return Ok((joined, events));
    }
    if let Some(max_members) = max_members
        && !present
    {
        let members: i64 = conn
            .prepare_cached(&sql.topic_members)
            .and_then(|mut s| s.query_row(params![t], |r| r.get(0)).optional())
            .map_err(db)?
            .unwrap_or(0);
        if members >= i64::from(max_members) {
            return Err(Error::TopicFull {
                topic: key.topic.clone(),
                max_members,
            });
        }
    }
    conn.prepare_cached(&sql.insert_entry)
        .and_then(|mut s| s.execute(params![t, m, c, meta_json, now]))
        .map_err(db)?;
    let entry = Entry {
        key: key.clone(),
        meta,
        joined_at: Timestamp::from_millis(now),
        last_seen_at: Timestamp::from_millis(now),
    };
    let first_for_member = !present;
    let events = vec![Event::Join {
        entry: entry.clone(),
        first_for_member,
    }];
    let joined = Joined {
        entry,
        first_for_member,
        was_present: false,
    };
    Ok((joined, events))
}

/// `update`.
pub(crate) fn update(
    conn: &Connection,
    sql: &Sql,
    key: &PresenceKey,
    meta: Meta,
    now: i64,
) -> Result<(Option<Entry>, Vec<Event>)> {
    let (t, m, c) = (
        key.topic.as_str(),
        key.member.as_str(),
        key.connection.as_str(),
    );
    let joined_at: Option<Option<i64>> = conn
        .prepare_cached(&sql.refresh_entry)
        .and_then(|mut s| {
            s.query_row(params![t, m, c, meta.to_json(), now], |r| {
                Ok(match r.get_ref(0)? {
                    ValueRef::Integer(millis) => Some(millis),
                    _ => None,
                })
            })
            .optional()
        })
        .map_err(db)?;
    let Some(joined_at) = joined_at else {
        return Ok((None, Vec::new()));
    };
    let joined_at = joined_at.unwrap_or(now);
    let entry = Entry {
        key: key.clone(),
        meta,
        joined_at: Timestamp::from_millis(joined_at),
        last_seen_at: Timestamp::from_millis(now),
    };
    Ok((Some(entry.clone()), vec![Event::Update { entry }]))
}

/// `touch_many` (and `touch`, a batch of one): the absent keys, each once.
pub(crate) fn touch(
    conn: &Connection,
    sql: &Sql,
    keys: &[PresenceKey],
    now: i64,
) -> Result<Vec<PresenceKey>> {
    let mut statement = conn.prepare_cached(&sql.touch_entry).map_err(db)?;
    let mut absent: Vec<PresenceKey> = Vec::new();
    for key in keys {
        let touched = statement
            .execute(params![
                key.topic.as_str(),
                key.member.as_str(),
                key.connection.as_str(),
                now
            ])
            .map_err(db)?;
        if touched == 0 {
            absent.push(key.clone());
        }
    }
    if absent.len() > 1 {
        let mut seen = HashSet::with_capacity(absent.len());
        absent.retain(|key| seen.insert(key.clone()));
    }
    Ok(absent)
}

/// What one `DELETE ... RETURNING REMOVED` removed.
struct Removed {
    departures: Vec<Departure>,
    events: Vec<Event>,
    /// Rows deleted, the invalid ones included.
    rows: usize,
}

/// Runs a `DELETE ... RETURNING REMOVED` and turns what it removed into the
/// call's departures and events. Rows that are not valid presence data are
/// deleted without a departure, with a warning; the count triggers keep
/// the counts right for them as for any row.
fn remove(conn: &Connection, delete: &str, params: impl Params, reason: Reason) -> Result<Removed> {
    let mut gone: Vec<(Topic, MemberId)> = Vec::new();
    let rows = read_rows(conn, delete, params, |row| {
        let Some(entry) = read_entry(row)? else {
            tracing::warn!(
                row = %describe(row),
                "presence-sqlite: deleted a stored entry whose ids or times are not valid presence data, without reporting a departure"
            );
            return Ok(None);
        };
        if row.get::<_, bool>(6).map_err(db)? {
            gone.push((entry.key.topic.clone(), entry.key.member.clone()));
        }
        Ok(Some(Departure {
            entry,
            reason,
            last_for_member: false,
        }))
    })?;
    let deleted = rows.len();
    let departures: Vec<Departure> = rows.into_iter().flatten().collect();
    if departures.is_empty() {
        return Ok(Removed {
            departures,
            events: Vec::new(),
            rows: deleted,
        });
    }
    gone.sort_unstable();
    let departures = Departure::finish(departures, |topic, member| {
        gone.binary_search_by(|(t, m)| (t, m).cmp(&(topic, member)))
            .is_ok()
    });
    let events = departures
        .iter()
        .map(|departure| Event::Leave {
            departure: departure.clone(),
        })
        .collect();
    Ok(Removed {
        departures,
        events,
        rows: deleted,
    })
}

/// A removal's result as the writer takes it.
fn removal(removed: Removed) -> (Vec<Departure>, Vec<Event>) {
    (removed.departures, removed.events)
}

/// `leave`.
pub(crate) fn leave(
    conn: &Connection,
    sql: &Sql,
    key: &PresenceKey,
) -> Result<(Vec<Departure>, Vec<Event>)> {
    let params = params![
        key.topic.as_str(),
        key.member.as_str(),
        key.connection.as_str()
    ];
    remove(conn, &sql.delete_entry, params, Reason::Left).map(removal)
}

/// `leave_member`.
pub(crate) fn leave_member(
    conn: &Connection,
    sql: &Sql,
    topic: &Topic,
    member: &MemberId,
) -> Result<(Vec<Departure>, Vec<Event>)> {
    let params = params![topic.as_str(), member.as_str()];
    remove(conn, &sql.delete_member, params, Reason::Left).map(removal)
}

/// `disconnect`.
pub(crate) fn disconnect(
    conn: &Connection,
    sql: &Sql,
    member: &MemberId,
    connection: &ConnectionId,
) -> Result<(Vec<Departure>, Vec<Event>)> {
    let params = params![member.as_str(), connection.as_str()];
    remove(conn, &sql.delete_connection, params, Reason::Disconnected).map(removal)
}

/// `sweep`: one topic, in one statement.
pub(crate) fn sweep(
    conn: &Connection,
    sql: &Sql,
    topic: &Topic,
    older_than: Timestamp,
) -> Result<(Vec<Departure>, Vec<Event>)> {
    let params = params![topic.as_str(), older_than.as_millis()];
    remove(conn, &sql.sweep_topic, params, Reason::Expired).map(removal)
}

/// One piece of a `sweep_all`.
#[derive(Debug)]
pub(crate) struct SweepPiece {
    /// Its departures, in the contract's order within each topic.
    pub(crate) departures: Vec<Departure>,
    /// Rows it deleted, invalid ones included.
    pub(crate) rows: usize,
    /// Whether expired entries may be left for another piece.
    pub(crate) more: bool,
}

/// One piece of a `sweep_all`: the topics of the oldest expired entries,
/// each swept whole (a topic is never split, so each stays atomic and a
/// member's `last_for_member` is exact), until about `rows` entries are
/// removed.
pub(crate) fn sweep_piece(
    conn: &Connection,
    sql: &Sql,
    older_than: Timestamp,
    rows: usize,
) -> Result<(SweepPiece, Vec<Event>)> {
    let older_than = older_than.as_millis();
    let limit = i64::try_from(rows).unwrap_or(i64::MAX);
    let sampled: Vec<Value> = read_rows(
        conn,
        &sql.sweep_candidates,
        params![older_than, limit],
        |row| row.get::<_, Value>(0).map_err(db),
    )?;
    // Each topic once, oldest first (a damaged topic that is not text is
    // swept all the same: it is bound back exactly as stored).
    let mut seen = HashSet::new();
    let topics: Vec<&Value> = sampled
        .iter()
        .filter(|topic| {
            seen.insert(match topic {
                Value::Text(text) => text.clone().into_bytes(),
                other => format!("{other:?}").into_bytes(),
            })
        })
        .collect();
    let mut piece = SweepPiece {
        departures: Vec::new(),
        rows: 0,
        more: sampled.len() as i64 == limit,
    };
    let mut events = Vec::new();
    for (swept, topic) in topics.iter().enumerate() {
        let removed = remove(
            conn,
            &sql.sweep_topic,
            params![topic, older_than],
            Reason::Expired,
        )?;
        piece.rows += removed.rows;
        piece.departures.extend(removed.departures);
        events.extend(removed.events);
        if piece.rows >= rows {
            piece.more |= swept + 1 < topics.len();
            break;
        }
    }
    Ok((piece, events))
}

/// `members`.
pub(crate) fn members(conn: &Connection, sql: &Sql, topic: &Topic) -> Result<Vec<Member>> {
    Ok(Member::group(entries(
        conn,
        &sql.select_topic,
        params![topic.as_str()],
    )?))
}

/// `member`.
pub(crate) fn member(
    conn: &Connection,
    sql: &Sql,
    topic: &Topic,
    member: &MemberId,
) -> Result<Option<Member>> {
    let rows = entries(
        conn,
        &sql.select_member,
        params![topic.as_str(), member.as_str()],
    )?;
    Ok(Member::group(rows).pop())
}

/// `count`: one row of the trigger-kept counts.
pub(crate) fn count(conn: &Connection, sql: &Sql, topic: &Topic) -> Result<Counts> {
    let counts: Option<(i64, i64)> = conn
        .prepare_cached(&sql.count)
        .and_then(|mut s| {
            s.query_row(params![topic.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(db)?;
    Ok(
        counts.map_or_else(Counts::default, |(members, connections)| Counts {
            members: members.max(0) as u64,
            connections: connections.max(0) as u64,
        }),
    )
}

/// `topics_of`.
pub(crate) fn topics_of(conn: &Connection, sql: &Sql, member: &MemberId) -> Result<Vec<Topic>> {
    let topics = read_rows(conn, &sql.topics_of, params![member.as_str()], |row| {
        let topic = text(row, 0)?.and_then(|name| Topic::new(name).ok());
        if topic.is_none() {
            tracing::warn!(
                row = %describe(row),
                "presence-sqlite: a stored topic is not a valid topic; topics_of skips it"
            );
        }
        Ok(topic)
    })?;
    Ok(topics.into_iter().flatten().collect())
}
