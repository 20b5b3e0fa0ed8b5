//! One shard of topics: the entries, the expiry order and the event channels.

use std::collections::{BTreeSet, HashMap};

use presence_core::{
    ConnectionId, Counts, Departure, Entry, Event, MemberId, Meta, PresenceKey, Reason, Timestamp,
    Topic, TopicBroadcast,
};
use smallvec::SmallVec;

pub(crate) type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The topics whose names hash to one shard.
pub(crate) struct TopicShard {
    pub(crate) topics: Map<Topic, TopicState>,
    /// `(oldest_bound, topic)` for every topic with entries, so a sweep finds
    /// the topics that may hold something expired without visiting the rest.
    pub(crate) expiry: BTreeSet<(i64, Topic)>,
    /// The subscribers of this shard's topics.
    pub(crate) channels: TopicBroadcast,
}

/// The entries of one topic.
pub(crate) struct TopicState {
    pub(crate) members: Map<MemberId, Connections>,
    pub(crate) connections: u64,
    /// At most the oldest `last_seen_at` in the topic. Exact after a sweep
    /// visits the topic; heartbeats only raise the true value, so it stays a
    /// valid lower bound without being touched on the hot path.
    oldest_bound: i64,
}

impl TopicState {
    /// Keeps `oldest_bound` a lower bound when an entry is stamped `now`
    /// (only matters when a clock goes backwards).
    fn lower_bound(&mut self, topic: &Topic, now: i64, expiry: &mut BTreeSet<(i64, Topic)>) {
        if now < self.oldest_bound {
            expiry.remove(&(self.oldest_bound, topic.clone()));
            self.oldest_bound = now;
            expiry.insert((now, topic.clone()));
        }
    }
}

/// One member's connections in one topic. Most members have one, kept inline.
pub(crate) type Connections = SmallVec<[ConnState; 1]>;

pub(crate) struct ConnState {
    pub(crate) id: ConnectionId,
    pub(crate) meta: Meta,
    pub(crate) joined_at: i64,
    pub(crate) last_seen_at: i64,
}

impl ConnState {
    pub(crate) fn entry(&self, topic: &Topic, member: &MemberId) -> Entry {
        Entry {
            key: PresenceKey {
                topic: topic.clone(),
                member: member.clone(),
                connection: self.id.clone(),
            },
            meta: self.meta.clone(),
            joined_at: Timestamp::from_millis(self.joined_at),
            last_seen_at: Timestamp::from_millis(self.last_seen_at),
        }
    }
}

/// What `upsert` did.
pub(crate) enum Upserted {
    Created {
        entry: Entry,
        first_for_member: bool,
    },
    Refreshed {
        entry: Entry,
        meta_changed: bool,
    },
}

impl TopicShard {
    pub(crate) fn new(event_buffer: usize) -> Self {
        Self {
            topics: Map::default(),
            expiry: BTreeSet::new(),
            channels: TopicBroadcast::new("memory", event_buffer),
        }
    }

    pub(crate) fn counts(&self, topic: &str) -> Counts {
        self.topics
            .get(topic)
            .map_or_else(Counts::default, |state| Counts {
                members: state.members.len() as u64,
                connections: state.connections,
            })
    }

    /// Whether `join_limited` must refuse `member`.
    pub(crate) fn is_full_for(&self, topic: &str, member: &str, max_members: u32) -> bool {
        match self.topics.get(topic) {
            Some(state) => {
                !state.members.contains_key(member) && state.members.len() >= max_members as usize
            }
            None => max_members == 0,
        }
    }

    /// Inserts an entry, or refreshes the existing one and replaces its meta.
    pub(crate) fn upsert(&mut self, key: &PresenceKey, meta: Meta, now: i64) -> Upserted {
        let Self { topics, expiry, .. } = self;
        let state = match topics.get_mut(key.topic.as_str()) {
            Some(state) => state,
            None => {
                expiry.insert((now, key.topic.clone()));
                topics.entry(key.topic.clone()).or_insert(TopicState {
                    members: Map::default(),
                    connections: 0,
                    oldest_bound: now,
                })
            }
        };
        state.lower_bound(&key.topic, now, expiry);
        if let Some(connections) = state.members.get_mut(key.member.as_str())
            && let Some(conn) = connections.iter_mut().find(|c| c.id == key.connection)
        {
            let meta_changed = conn.meta != meta;
            conn.meta = meta;
            conn.last_seen_at = now;
            return Upserted::Refreshed {
                entry: conn.entry(&key.topic, &key.member),
                meta_changed,
            };
        }
        let conn = ConnState {
            id: key.connection.clone(),
            meta,
            joined_at: now,
            last_seen_at: now,
        };
        let entry = conn.entry(&key.topic, &key.member);
        let first_for_member = match state.members.get_mut(key.member.as_str()) {
            Some(connections) => {
                connections.push(conn);
                false
            }
            None => {
                let connections = SmallVec::from_buf([conn]);
                state.members.insert(key.member.clone(), connections);
                true
            }
        };
        state.connections += 1;
        Upserted::Created {
            entry,
            first_for_member,
        }
    }

    /// Refreshes `last_seen_at` (and replaces meta when given) of an existing
    /// entry; `None` when it is absent.
    pub(crate) fn refresh(
        &mut self,
        key: &PresenceKey,
        meta: Option<Meta>,
        now: i64,
    ) -> Option<&ConnState> {
        let Self { topics, expiry, .. } = self;
        let state = topics.get_mut(key.topic.as_str())?;
        // Lowering the bound of a topic that turns out not to hold the entry
        // is harmless: it stays a lower bound.
        state.lower_bound(&key.topic, now, expiry);
        let conn = state
            .members
            .get_mut(key.member.as_str())?
            .iter_mut()
            .find(|c| c.id == key.connection)?;
        conn.last_seen_at = now;
        if let Some(meta) = meta {
            conn.meta = meta;
        }
        Some(conn)
    }

    /// Removes the entries of `topic` that `doomed` picks and returns them as
    /// departures in the contract's order, `last_for_member` set. Keeps the
    /// connection count, the expiry order and the emptiness of the topic right.
    pub(crate) fn remove_where(
        &mut self,
        topic: &Topic,
        reason: Reason,
        mut doomed: impl FnMut(&MemberId, &ConnState) -> bool,
    ) -> Vec<Departure> {
        let Some(state) = self.topics.get_mut(topic.as_str()) else {
            return Vec::new();
        };
        let mut departures = Vec::new();
        let mut oldest = i64::MAX;
        state.members.retain(|member, connections| {
            connections.retain(|conn| {
                if doomed(member, conn) {
                    departures.push(Departure {
                        entry: conn.entry(topic, member),
                        reason,
                        last_for_member: false,
                    });
                    false
                } else {
                    oldest = oldest.min(conn.last_seen_at);
                    true
                }
            });
            !connections.is_empty()
        });
        // The scan saw every entry: make the bound exact, so a topic kept
        // alive by heartbeats is not scanned again until it may expire.
        state.connections -= departures.len() as u64;
        if state.members.is_empty() {
            self.expiry.remove(&(state.oldest_bound, topic.clone()));
            self.topics.remove(topic.as_str());
        } else if oldest != state.oldest_bound {
            self.expiry.remove(&(state.oldest_bound, topic.clone()));
            state.oldest_bound = oldest;
            self.expiry.insert((oldest, topic.clone()));
        }
        if departures.is_empty() {
            return departures;
        }
        let topics = &self.topics;
        Departure::finish(departures, |topic, member| {
            topics
                .get(topic.as_str())
                .is_none_or(|state| !state.members.contains_key(member.as_str()))
        })
    }

    /// Removes the entries of one member of `topic` that `doomed` picks,
    /// visiting only that member's connections.
    pub(crate) fn remove_member_where(
        &mut self,
        topic: &Topic,
        member: &MemberId,
        reason: Reason,
        mut doomed: impl FnMut(&ConnState) -> bool,
    ) -> Vec<Departure> {
        let Some(state) = self.topics.get_mut(topic.as_str()) else {
            return Vec::new();
        };
        let Some(connections) = state.members.get_mut(member.as_str()) else {
            return Vec::new();
        };
        let mut departures = Vec::new();
        connections.retain(|conn| {
            let gone = doomed(conn);
            if gone {
                departures.push(Departure {
                    entry: conn.entry(topic, member),
                    reason,
                    last_for_member: false,
                });
            }
            !gone
        });
        if departures.is_empty() {
            return departures;
        }
        let member_gone = connections.is_empty();
        if member_gone {
            state.members.remove(member.as_str());
        }
        state.connections -= departures.len() as u64;
        if state.members.is_empty() {
            self.expiry.remove(&(state.oldest_bound, topic.clone()));
            self.topics.remove(topic.as_str());
        }
        // Otherwise the expiry bound may now be lower than the true oldest,
        // which keeps it valid.
        Departure::finish(departures, |_, _| member_gone)
    }

    /// Topics whose oldest entry may be older than `older_than`.
    pub(crate) fn due_for_sweep(&self, older_than: i64) -> Vec<Topic> {
        self.expiry
            .iter()
            .take_while(|(bound, _)| *bound < older_than)
            .map(|(_, topic)| topic.clone())
            .collect()
    }

    /// Whether `topic` may hold an entry older than `older_than`.
    pub(crate) fn may_expire(&self, topic: &str, older_than: i64) -> bool {
        self.topics
            .get(topic)
            .is_some_and(|state| state.oldest_bound < older_than)
    }
}

/// The `Leave` events of some departures, in order.
pub(crate) fn leave_events(departures: &[Departure]) -> Vec<Event> {
    departures
        .iter()
        .map(|departure| Event::Leave {
            departure: departure.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(topic: &str, member: &str) -> PresenceKey {
        PresenceKey::new(topic, member, "c").unwrap()
    }

    #[test]
    fn a_sweep_that_finds_nothing_makes_the_bound_exact() {
        let mut shard = TopicShard::new(16);
        let (a, b) = (key("t", "a"), key("t", "b"));
        shard.upsert(&a, Meta::new(), 0);
        shard.upsert(&b, Meta::new(), 0);
        shard.refresh(&a, None, 100);
        shard.refresh(&b, None, 120);
        // The bound still says 0: the topic is due for a sweep at 50.
        assert_eq!(shard.due_for_sweep(50), std::slice::from_ref(&a.topic));
        let removed = shard.remove_where(&a.topic, Reason::Expired, |_, c| c.last_seen_at < 50);
        assert!(removed.is_empty());
        // Now the bound is the true oldest (100): not due until after it.
        assert!(shard.due_for_sweep(100).is_empty());
        assert_eq!(shard.due_for_sweep(101), std::slice::from_ref(&a.topic));
    }

    #[test]
    fn removing_the_last_entry_forgets_the_topic() {
        let mut shard = TopicShard::new(16);
        let a = key("t", "a");
        shard.upsert(&a, Meta::new(), 5);
        let gone = shard.remove_member_where(&a.topic, &a.member, Reason::Left, |_| true);
        assert_eq!(gone.len(), 1);
        assert!(gone[0].last_for_member);
        assert!(shard.topics.is_empty());
        assert!(shard.expiry.is_empty());
        assert!(shard.due_for_sweep(i64::MAX).is_empty());
    }
}
