//! Every statement the store runs, and the operations built from them. Values
//! are always bound; only the validated table prefix is written into SQL.

use std::collections::HashSet;

use presence_core::{
    ConnectionId, Counts, Departure, Entry, Error, Event, Joined, Member, MemberId, Meta,
    PresenceKey, Reason, Result, Timestamp, Topic,
};
use rusqlite::{Connection, OptionalExtension, Params, Row, params};

use crate::error::{SqliteError, db};

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
    sweep_all: String,
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
            sweep_all: render("DELETE FROM {p}entries WHERE last_seen_at < ?1 RETURNING {removed}"),
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

fn corrupt(error: Error) -> Error {
    SqliteError::CorruptRow(error.to_string()).into()
}

/// An entry from a row of `COLUMNS`.
fn read_entry(row: &Row<'_>) -> Result<Entry> {
    let text = |i: usize| {
        row.get_ref(i)
            .and_then(|v| Ok(v.as_str()?.to_owned()))
            .map_err(db)
    };
    let key = PresenceKey::new(text(0)?, text(1)?, text(2)?).map_err(corrupt)?;
    Ok(Entry {
        key,
        meta: Meta::from_json(&text(3)?).map_err(corrupt)?,
        joined_at: Timestamp::from_millis(row.get(4).map_err(db)?),
        last_seen_at: Timestamp::from_millis(row.get(5).map_err(db)?),
    })
}

/// Every entry a `COLUMNS` query yields.
fn entries(conn: &Connection, sql: &str, params: impl Params) -> Result<Vec<Entry>> {
    read_rows(conn, sql, params, read_entry)
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
    let (existing, present): (Option<(String, i64)>, bool) = conn
        .prepare_cached(&sql.select_entry)
        .and_then(|mut s| {
            s.query_row(params![t, m, c], |r| {
                let meta: Option<String> = r.get(0)?;
                let joined_at: Option<i64> = r.get(1)?;
                Ok((meta.zip(joined_at), r.get(2)?))
            })
        })
        .map_err(db)?;
    if let Some((old_json, joined_at)) = existing {
        conn.prepare_cached(&sql.refresh_entry)
            .and_then(|mut s| s.query_row(params![t, m, c, meta_json, now], |_| Ok(())))
            .map_err(db)?;
        let changed = old_json != meta_json && Meta::from_json(&old_json).map_err(corrupt)? != meta;
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
    let joined_at: Option<i64> = conn
        .prepare_cached(&sql.refresh_entry)
        .and_then(|mut s| {
            s.query_row(params![t, m, c, meta.to_json(), now], |r| r.get(0))
                .optional()
        })
        .map_err(db)?;
    let Some(joined_at) = joined_at else {
        return Ok((None, Vec::new()));
    };
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

/// Runs a `DELETE ... RETURNING REMOVED` and turns what it removed into the
/// call's departures and events.
fn remove(
    conn: &Connection,
    delete: &str,
    params: impl Params,
    reason: Reason,
) -> Result<(Vec<Departure>, Vec<Event>)> {
    let mut gone: Vec<(Topic, MemberId)> = Vec::new();
    let departures = read_rows(conn, delete, params, |row| {
        let entry = read_entry(row)?;
        if row.get::<_, bool>(6).map_err(db)? {
            gone.push((entry.key.topic.clone(), entry.key.member.clone()));
        }
        Ok(Departure {
            entry,
            reason,
            last_for_member: false,
        })
    })?;
    if departures.is_empty() {
        return Ok((Vec::new(), Vec::new()));
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
    Ok((departures, events))
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
    remove(conn, &sql.delete_entry, params, Reason::Left)
}

/// `leave_member`.
pub(crate) fn leave_member(
    conn: &Connection,
    sql: &Sql,
    topic: &Topic,
    member: &MemberId,
) -> Result<(Vec<Departure>, Vec<Event>)> {
    let params = params![topic.as_str(), member.as_str()];
    remove(conn, &sql.delete_member, params, Reason::Left)
}

/// `disconnect`.
pub(crate) fn disconnect(
    conn: &Connection,
    sql: &Sql,
    member: &MemberId,
    connection: &ConnectionId,
) -> Result<(Vec<Departure>, Vec<Event>)> {
    let params = params![member.as_str(), connection.as_str()];
    remove(conn, &sql.delete_connection, params, Reason::Disconnected)
}

/// `sweep` (one topic) or `sweep_all` (`None`).
pub(crate) fn sweep(
    conn: &Connection,
    sql: &Sql,
    topic: Option<&Topic>,
    older_than: Timestamp,
) -> Result<(Vec<Departure>, Vec<Event>)> {
    let older_than = older_than.as_millis();
    match topic {
        Some(topic) => remove(
            conn,
            &sql.sweep_topic,
            params![topic.as_str(), older_than],
            Reason::Expired,
        ),
        None => remove(conn, &sql.sweep_all, params![older_than], Reason::Expired),
    }
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
    read_rows(conn, &sql.topics_of, params![member.as_str()], |row| {
        let name: String = row.get(0).map_err(db)?;
        Topic::new(name).map_err(corrupt)
    })
}
