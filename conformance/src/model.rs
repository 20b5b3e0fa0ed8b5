//! A plain reference model of the contract: one ordered map, no cleverness.
//! The state machine compares every backend with it.

use std::collections::{BTreeMap, BTreeSet};

use presence_core::{
    Connection, ConnectionId, Counts, Departure, Entry, Event, Joined, Member, MemberId, Meta,
    PresenceKey, Reason, Timestamp, Topic,
};

/// A failure the model predicts, compared with the backend's error.
#[derive(Clone, PartialEq, Debug)]
pub(crate) enum Failure {
    TopicFull { topic: Topic, max_members: u32 },
    Invalid { field: &'static str },
}

impl Failure {
    pub(crate) fn of(error: &presence_core::Error) -> Failure {
        match error {
            presence_core::Error::TopicFull { topic, max_members } => Failure::TopicFull {
                topic: topic.clone(),
                max_members: *max_members,
            },
            presence_core::Error::InvalidInput { field, .. } => Failure::Invalid { field },
            other => panic!("the backend failed: {other}"),
        }
    }
}

#[derive(Clone, Debug)]
struct Slot {
    meta: Meta,
    joined_at: Timestamp,
    last_seen_at: Timestamp,
}

#[derive(Default)]
pub(crate) struct Model {
    entries: BTreeMap<PresenceKey, Slot>,
    /// The events each topic's subscriber should have received, in order.
    pub(crate) events: BTreeMap<Topic, Vec<Event>>,
    pub(crate) max_meta_bytes: usize,
}

impl Model {
    pub(crate) fn new(max_meta_bytes: usize) -> Self {
        Self {
            max_meta_bytes,
            ..Self::default()
        }
    }

    fn entry(&self, key: &PresenceKey) -> Option<Entry> {
        self.entries.get(key).map(|slot| Entry {
            key: key.clone(),
            meta: slot.meta.clone(),
            joined_at: slot.joined_at,
            last_seen_at: slot.last_seen_at,
        })
    }

    fn emit(&mut self, event: Event) {
        let topic = event.topic().expect("model events have topics").clone();
        self.events.entry(topic).or_default().push(event);
    }

    fn has_member(&self, topic: &Topic, member: &MemberId) -> bool {
        self.entries
            .keys()
            .any(|key| key.topic == *topic && key.member == *member)
    }

    fn member_ids(&self, topic: &Topic) -> BTreeSet<MemberId> {
        self.entries
            .keys()
            .filter(|key| key.topic == *topic)
            .map(|key| key.member.clone())
            .collect()
    }

    fn check_meta(&self, meta: &Meta) -> Result<(), Failure> {
        if meta.json_len() > self.max_meta_bytes {
            return Err(Failure::Invalid { field: "meta" });
        }
        Ok(())
    }

    pub(crate) fn join(
        &mut self,
        key: &PresenceKey,
        meta: Meta,
        max_members: Option<u32>,
        now: Timestamp,
    ) -> Result<Joined, Failure> {
        self.check_meta(&meta)?;
        let first_for_member = !self.has_member(&key.topic, &key.member);
        if let Some(max) = max_members
            && first_for_member
            && self.member_ids(&key.topic).len() >= max as usize
        {
            return Err(Failure::TopicFull {
                topic: key.topic.clone(),
                max_members: max,
            });
        }
        match self.entries.get_mut(key) {
            Some(slot) => {
                let changed = slot.meta != meta;
                slot.meta = meta;
                slot.last_seen_at = now;
                let entry = self.entry(key).expect("present");
                if changed {
                    self.emit(Event::Update {
                        entry: entry.clone(),
                    });
                }
                Ok(Joined {
                    entry,
                    first_for_member: false,
                    was_present: true,
                })
            }
            None => {
                let slot = Slot {
                    meta,
                    joined_at: now,
                    last_seen_at: now,
                };
                self.entries.insert(key.clone(), slot);
                let entry = self.entry(key).expect("inserted");
                self.emit(Event::Join {
                    entry: entry.clone(),
                    first_for_member,
                });
                Ok(Joined {
                    entry,
                    first_for_member,
                    was_present: false,
                })
            }
        }
    }

    pub(crate) fn update(
        &mut self,
        key: &PresenceKey,
        meta: Meta,
        now: Timestamp,
    ) -> Result<Option<Entry>, Failure> {
        self.check_meta(&meta)?;
        let Some(slot) = self.entries.get_mut(key) else {
            return Ok(None);
        };
        slot.meta = meta;
        slot.last_seen_at = now;
        let entry = self.entry(key).expect("present");
        self.emit(Event::Update {
            entry: entry.clone(),
        });
        Ok(Some(entry))
    }

    pub(crate) fn touch(&mut self, key: &PresenceKey, now: Timestamp) -> bool {
        match self.entries.get_mut(key) {
            Some(slot) => {
                slot.last_seen_at = now;
                true
            }
            None => false,
        }
    }

    pub(crate) fn touch_many(&mut self, keys: &[PresenceKey], now: Timestamp) -> Vec<PresenceKey> {
        let mut absent: Vec<PresenceKey> = Vec::new();
        for key in keys {
            if !self.touch(key, now) && !absent.contains(key) {
                absent.push(key.clone());
            }
        }
        absent
    }

    /// Removes `keys` (all present) for one call: departures ordered by key,
    /// the last of each member flagged when it has nothing left in the topic.
    fn remove(&mut self, keys: Vec<PresenceKey>, reason: Reason) -> Vec<Departure> {
        let mut keys = keys;
        keys.sort();
        let entries: Vec<Entry> = keys
            .iter()
            .map(|k| self.entry(k).expect("present"))
            .collect();
        for key in &keys {
            self.entries.remove(key);
        }
        let mut departures = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            let next_is_same_member = entries.get(i + 1).is_some_and(|next| {
                next.key.topic == entry.key.topic && next.key.member == entry.key.member
            });
            let last_for_member =
                !next_is_same_member && !self.has_member(&entry.key.topic, &entry.key.member);
            departures.push(Departure {
                entry: entry.clone(),
                reason,
                last_for_member,
            });
        }
        for departure in &departures {
            self.emit(Event::Leave {
                departure: departure.clone(),
            });
        }
        departures
    }

    fn keys_where(&self, pick: impl Fn(&PresenceKey, &Slot) -> bool) -> Vec<PresenceKey> {
        self.entries
            .iter()
            .filter(|(key, slot)| pick(key, slot))
            .map(|(key, _)| key.clone())
            .collect()
    }

    pub(crate) fn leave(&mut self, key: &PresenceKey) -> Option<Departure> {
        let keys = self.keys_where(|k, _| k == key);
        self.remove(keys, Reason::Left).pop()
    }

    pub(crate) fn leave_member(&mut self, topic: &Topic, member: &MemberId) -> Vec<Departure> {
        let keys = self.keys_where(|k, _| k.topic == *topic && k.member == *member);
        self.remove(keys, Reason::Left)
    }

    pub(crate) fn disconnect(
        &mut self,
        member: &MemberId,
        connection: &ConnectionId,
    ) -> Vec<Departure> {
        let keys = self.keys_where(|k, _| k.member == *member && k.connection == *connection);
        self.remove(keys, Reason::Disconnected)
    }

    pub(crate) fn sweep(&mut self, topic: Option<&Topic>, older_than: Timestamp) -> Vec<Departure> {
        let keys = self.keys_where(|k, slot| {
            topic.is_none_or(|t| k.topic == *t) && slot.last_seen_at < older_than
        });
        self.remove(keys, Reason::Expired)
    }

    pub(crate) fn members(&self, topic: &Topic) -> Vec<Member> {
        let mut members: Vec<Member> = Vec::new();
        for member in self.member_ids(topic) {
            let mut connections: Vec<Connection> = self
                .entries
                .iter()
                .filter(|(k, _)| k.topic == *topic && k.member == member)
                .map(|(k, slot)| Connection {
                    connection: k.connection.clone(),
                    meta: slot.meta.clone(),
                    joined_at: slot.joined_at,
                    last_seen_at: slot.last_seen_at,
                })
                .collect();
            connections.sort_by(|a, b| {
                a.joined_at
                    .cmp(&b.joined_at)
                    .then_with(|| a.connection.cmp(&b.connection))
            });
            members.push(Member {
                topic: topic.clone(),
                member,
                joined_at: connections.iter().map(|c| c.joined_at).min().expect("some"),
                last_seen_at: connections
                    .iter()
                    .map(|c| c.last_seen_at)
                    .max()
                    .expect("some"),
                connections,
            });
        }
        members.sort_by(|a, b| {
            a.joined_at
                .cmp(&b.joined_at)
                .then_with(|| a.member.cmp(&b.member))
        });
        members
    }

    pub(crate) fn member(&self, topic: &Topic, member: &MemberId) -> Option<Member> {
        self.members(topic)
            .into_iter()
            .find(|m| m.member == *member)
    }

    pub(crate) fn count(&self, topic: &Topic) -> Counts {
        Counts {
            members: self.member_ids(topic).len() as u64,
            connections: self.entries.keys().filter(|k| k.topic == *topic).count() as u64,
        }
    }

    pub(crate) fn topics_of(&self, member: &MemberId) -> Vec<Topic> {
        let topics: BTreeSet<Topic> = self
            .entries
            .keys()
            .filter(|k| k.member == *member)
            .map(|k| k.topic.clone())
            .collect();
        topics.into_iter().collect()
    }
}
