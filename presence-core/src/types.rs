//! The values stores return: entries, member views, counts, departures, events.

use serde::{Deserialize, Serialize};

use crate::{ConnectionId, MemberId, Meta, PresenceKey, Timestamp, Topic};

/// One `(topic, member, connection)` presence with its meta and times.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct Entry {
    /// Which presence this is.
    pub key: PresenceKey,
    /// The connection's metadata.
    pub meta: Meta,
    /// When the connection first joined (kept by re-joins).
    pub joined_at: Timestamp,
    /// When the connection last joined, updated or touched.
    pub last_seen_at: Timestamp,
}

/// One connection inside a [`Member`] view.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct Connection {
    /// The connection's id.
    pub connection: ConnectionId,
    /// The connection's metadata.
    pub meta: Meta,
    /// When the connection first joined.
    pub joined_at: Timestamp,
    /// When the connection was last seen.
    pub last_seen_at: Timestamp,
}

/// A member of a topic with all its connections.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct Member {
    /// The topic.
    pub topic: Topic,
    /// The member.
    pub member: MemberId,
    /// The earliest `joined_at` of its connections.
    pub joined_at: Timestamp,
    /// The latest `last_seen_at` of its connections.
    pub last_seen_at: Timestamp,
    /// Its connections, ordered by `joined_at`, then connection id. Never empty.
    pub connections: Vec<Connection>,
}

impl Member {
    /// Groups entries into member views, in the contract's order: members by
    /// `joined_at`, then member id; connections likewise by `joined_at`, then
    /// connection id. Entries may come in any order and from several topics.
    pub fn group(entries: impl IntoIterator<Item = Entry>) -> Vec<Member> {
        let mut entries: Vec<Entry> = entries.into_iter().collect();
        entries.sort_by(|a, b| {
            (&a.key.topic, &a.key.member, a.joined_at, &a.key.connection).cmp(&(
                &b.key.topic,
                &b.key.member,
                b.joined_at,
                &b.key.connection,
            ))
        });
        let mut members: Vec<Member> = Vec::new();
        for entry in entries {
            let connection = Connection {
                connection: entry.key.connection,
                meta: entry.meta,
                joined_at: entry.joined_at,
                last_seen_at: entry.last_seen_at,
            };
            match members.last_mut() {
                Some(last) if last.topic == entry.key.topic && last.member == entry.key.member => {
                    last.last_seen_at = last.last_seen_at.max(connection.last_seen_at);
                    last.connections.push(connection);
                }
                _ => members.push(Member {
                    topic: entry.key.topic,
                    member: entry.key.member,
                    joined_at: connection.joined_at,
                    last_seen_at: connection.last_seen_at,
                    connections: vec![connection],
                }),
            }
        }
        members.sort_by(|a, b| {
            (&a.topic, a.joined_at, &a.member).cmp(&(&b.topic, b.joined_at, &b.member))
        });
        members
    }

    /// Whether two member lists agree on who is present: the same members
    /// in the same order, each with the same topic, `joined_at` and
    /// connections (id, meta and `joined_at`, in order). `last_seen_at` is
    /// left out: heartbeats move it without events, so a list kept from
    /// events (`LiveMembers`) and the store's own may differ only there.
    pub fn same_presence(a: &[Member], b: &[Member]) -> bool {
        let same_connection = |x: &Connection, y: &Connection| {
            x.connection == y.connection && x.meta == y.meta && x.joined_at == y.joined_at
        };
        a.len() == b.len()
            && a.iter().zip(b).all(|(x, y)| {
                x.topic == y.topic
                    && x.member == y.member
                    && x.joined_at == y.joined_at
                    && x.connections.len() == y.connections.len()
                    && x.connections
                        .iter()
                        .zip(&y.connections)
                        .all(|(c, d)| same_connection(c, d))
            })
    }

    /// The member's connections as entries.
    pub fn entries(&self) -> impl Iterator<Item = Entry> + '_ {
        self.connections.iter().map(|connection| Entry {
            key: PresenceKey {
                topic: self.topic.clone(),
                member: self.member.clone(),
                connection: connection.connection.clone(),
            },
            meta: connection.meta.clone(),
            joined_at: connection.joined_at,
            last_seen_at: connection.last_seen_at,
        })
    }
}

/// How many are present in a topic.
#[derive(Copy, Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct Counts {
    /// Distinct members.
    pub members: u64,
    /// Connections of all members.
    pub connections: u64,
}

/// What a `join` did.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct Joined {
    /// The entry as stored after the join.
    pub entry: Entry,
    /// The member had no connection in the topic before this join.
    pub first_for_member: bool,
    /// This very connection was already present (a re-join).
    pub was_present: bool,
}

/// Why an entry was removed.
#[derive(Copy, Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Reason {
    /// `leave` or `leave_member`.
    Left,
    /// `sweep` or `sweep_all`: not seen for too long.
    Expired,
    /// `disconnect`: the connection closed.
    Disconnected,
}

/// A removed entry.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct Departure {
    /// The entry as it was when removed.
    pub entry: Entry,
    /// Why it was removed.
    pub reason: Reason,
    /// The member has no connection left in the topic afterwards. When one
    /// call removes several connections of a member, exactly one departure
    /// (the member's last in the returned order) carries `true`.
    pub last_for_member: bool,
}

impl Departure {
    /// Puts the departures of one call into the contract's order (by topic,
    /// member, connection) and sets `last_for_member` on the last departure
    /// of each member for which `member_gone(topic, member)` holds, and on no
    /// other.
    pub fn finish(
        mut departures: Vec<Departure>,
        mut member_gone: impl FnMut(&Topic, &MemberId) -> bool,
    ) -> Vec<Departure> {
        departures.sort_by(|a, b| a.entry.key.cmp(&b.entry.key));
        let len = departures.len();
        for i in 0..len {
            let key = &departures[i].entry.key;
            let is_members_last = departures.get(i + 1).is_none_or(|next| {
                next.entry.key.topic != key.topic || next.entry.key.member != key.member
            });
            let last = is_members_last && member_gone(&key.topic, &key.member);
            departures[i].last_for_member = last;
        }
        departures
    }
}

/// A committed change of a topic, as seen by a subscriber.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// A join created an entry.
    Join {
        /// The new entry.
        entry: Entry,
        /// The member had no connection in the topic before.
        first_for_member: bool,
    },
    /// `update`, or a re-join, changed an entry's meta.
    Update {
        /// The entry after the change.
        entry: Entry,
    },
    /// An entry was removed, for whatever reason.
    Leave {
        /// What was removed and why.
        departure: Departure,
    },
    /// The subscriber may have missed events: re-read `members`.
    Resync,
}

impl Event {
    /// The topic the event belongs to (`None` for `Resync`).
    pub fn topic(&self) -> Option<&Topic> {
        match self {
            Event::Join { entry, .. } | Event::Update { entry } => Some(&entry.key.topic),
            Event::Leave { departure } => Some(&departure.entry.key.topic),
            Event::Resync => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(topic: &str, member: &str, connection: &str, joined: i64, seen: i64) -> Entry {
        Entry {
            key: PresenceKey::new(topic, member, connection).unwrap(),
            meta: Meta::new(),
            joined_at: Timestamp::from_millis(joined),
            last_seen_at: Timestamp::from_millis(seen),
        }
    }

    #[test]
    fn group_orders_members_and_connections() {
        let members = Member::group([
            entry("t", "bob", "b2", 5, 9),
            entry("t", "alice", "a1", 3, 4),
            entry("t", "bob", "b1", 5, 6),
            entry("t", "bob", "b0", 7, 7),
            entry("t", "Alice", "x", 3, 3),
        ]);
        let names: Vec<&str> = members.iter().map(|m| m.member.as_str()).collect();
        assert_eq!(names, ["Alice", "alice", "bob"]);
        let bob = &members[2];
        let conns: Vec<&str> = bob
            .connections
            .iter()
            .map(|c| c.connection.as_str())
            .collect();
        assert_eq!(conns, ["b1", "b2", "b0"]);
        assert_eq!(bob.joined_at, Timestamp::from_millis(5));
        assert_eq!(bob.last_seen_at, Timestamp::from_millis(9));
    }

    #[test]
    fn same_presence_ignores_only_last_seen() {
        let base = Member::group([entry("t", "a", "c1", 1, 5), entry("t", "b", "c1", 2, 5)]);
        let heartbeated = Member::group([entry("t", "a", "c1", 1, 9), entry("t", "b", "c1", 2, 7)]);
        assert!(Member::same_presence(&base, &heartbeated));

        let mut other_meta = heartbeated.clone();
        other_meta[1].connections[0].meta = Meta::from_json(r#"{"x":1}"#).unwrap();
        assert!(!Member::same_presence(&base, &other_meta));
        let rejoined = Member::group([entry("t", "a", "c1", 3, 5), entry("t", "b", "c1", 2, 5)]);
        assert!(!Member::same_presence(&base, &rejoined));
        let more = Member::group([
            entry("t", "a", "c1", 1, 5),
            entry("t", "a", "c2", 1, 5),
            entry("t", "b", "c1", 2, 5),
        ]);
        assert!(!Member::same_presence(&base, &more));
        assert!(!Member::same_presence(&base, &base[..1]));
    }

    #[test]
    fn finish_marks_one_last_departure_per_gone_member() {
        let departure = |member: &str, connection: &str| Departure {
            entry: entry("t", member, connection, 0, 0),
            reason: Reason::Left,
            last_for_member: true,
        };
        let done = Departure::finish(
            vec![
                departure("b", "2"),
                departure("a", "1"),
                departure("b", "1"),
            ],
            |_, member| member.as_str() == "b",
        );
        let flags: Vec<(&str, &str, bool)> = done
            .iter()
            .map(|d| {
                (
                    d.entry.key.member.as_str(),
                    d.entry.key.connection.as_str(),
                    d.last_for_member,
                )
            })
            .collect();
        assert_eq!(
            flags,
            [("a", "1", false), ("b", "1", false), ("b", "2", true)]
        );
    }
}
