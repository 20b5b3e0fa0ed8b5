//! The member index: which topics each member is present in, so `disconnect`
//! and `topics_of` visit only the member's own topics, never all of them.

use presence_core::{MemberId, Topic};
use smallvec::SmallVec;

use crate::topic::Map;

/// A member's connections are listed flat up to this many; past it, the
/// member moves to a map, so a member in 100,000 topics still leaves each
/// in constant time.
const FLAT: usize = 8;

/// The members whose ids hash to one shard.
#[derive(Default)]
pub(crate) struct MemberShard {
    /// Per member with few connections, one topic per connection it has
    /// there (a topic repeats when the member has several connections in
    /// it; connection ids are not kept: `disconnect` checks the topic).
    /// Most members are in few topics: a flat inline list costs nothing
    /// beyond the entry itself.
    few: Map<MemberId, SmallVec<[Topic; 1]>>,
    /// Members with more than [`FLAT`] connections: per topic, how many.
    many: Map<MemberId, Map<Topic, u32>>,
}

impl MemberShard {
    /// Records one more connection of `member` in `topic`.
    pub(crate) fn add(&mut self, member: &MemberId, topic: &Topic) {
        if let Some(topics) = self.many.get_mut(member.as_str()) {
            *topics.entry(topic.clone()).or_insert(0) += 1;
            return;
        }
        let flat = self.few.entry(member.clone()).or_default();
        if flat.len() < FLAT {
            flat.push(topic.clone());
            return;
        }
        let mut topics: Map<Topic, u32> = Map::default();
        for topic in flat.drain(..).chain(std::iter::once(topic.clone())) {
            *topics.entry(topic).or_insert(0) += 1;
        }
        self.few.remove(member.as_str());
        self.many.insert(member.clone(), topics);
    }

    /// Records that one connection of `member` left `topic`.
    pub(crate) fn remove(&mut self, member: &MemberId, topic: &Topic) {
        if let Some(topics) = self.many.get_mut(member.as_str()) {
            if let Some(n) = topics.get_mut(topic.as_str()) {
                *n -= 1;
                if *n == 0 {
                    topics.remove(topic.as_str());
                }
            }
            if topics.is_empty() {
                self.many.remove(member.as_str());
            }
            return;
        }
        let Some(flat) = self.few.get_mut(member.as_str()) else {
            return;
        };
        if let Some(at) = flat.iter().position(|t| t == topic) {
            flat.swap_remove(at);
        }
        if flat.is_empty() {
            self.few.remove(member.as_str());
        }
    }

    /// The topics of `member`, sorted, each once.
    pub(crate) fn topics_of(&self, member: &str) -> Vec<Topic> {
        let mut topics: Vec<Topic> = match self.many.get(member) {
            Some(topics) => topics.keys().cloned().collect(),
            None => self
                .few
                .get(member)
                .into_iter()
                .flatten()
                .cloned()
                .collect(),
        };
        topics.sort_unstable();
        topics.dedup();
        topics
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_connections_per_topic_past_the_flat_list() {
        let mut shard = MemberShard::default();
        let alice = MemberId::new("alice").unwrap();
        let topics: Vec<Topic> = (0..20)
            .map(|i| Topic::new(format!("t{i:02}")).unwrap())
            .collect();
        // Two connections in t03 while the list is flat: one leaving later
        // keeps the topic.
        shard.add(&alice, &topics[3]);
        for topic in &topics {
            shard.add(&alice, topic);
        }
        assert!(shard.many.contains_key("alice"), "past the flat list");
        shard.remove(&alice, &topics[3]);
        assert_eq!(shard.topics_of("alice"), topics);
        for topic in &topics[..19] {
            shard.remove(&alice, topic);
        }
        assert_eq!(shard.topics_of("alice"), [topics[19].clone()]);
        shard.remove(&alice, &topics[19]);
        assert!(
            shard.many.is_empty() && shard.few.is_empty(),
            "a member with no topic is forgotten"
        );
        shard.remove(&alice, &topics[0]);
        assert!(shard.topics_of("alice").is_empty());
    }

    #[test]
    fn a_flat_list_keeps_one_topic_per_connection() {
        let mut shard = MemberShard::default();
        let bob = MemberId::new("bob").unwrap();
        let room = Topic::new("room").unwrap();
        shard.add(&bob, &room);
        shard.add(&bob, &room);
        shard.remove(&bob, &room);
        assert_eq!(shard.topics_of("bob"), std::slice::from_ref(&room));
        shard.remove(&bob, &room);
        assert!(shard.topics_of("bob").is_empty());
    }
}
