//! The member index: which topics each member is present in, so `disconnect`
//! and `topics_of` visit only the member's own topics, never all of them.

use presence_core::{MemberId, Topic};
use smallvec::SmallVec;

use crate::topic::Map;

/// A member's topics held in a flat list up to this many; past it, in a map,
/// so a member in 100,000 topics still leaves each in constant time.
const FLAT: usize = 8;

/// The members whose ids hash to one shard.
#[derive(Default)]
pub(crate) struct MemberShard {
    members: Map<MemberId, MemberTopics>,
}

/// One member's topics, each with how many connections it has there
/// (connection ids are not kept: `disconnect` checks the topic itself).
/// Most members are in few topics, kept inline without a map.
enum MemberTopics {
    Flat(SmallVec<[(Topic, u32); 1]>),
    Map(Map<Topic, u32>),
}

impl MemberTopics {
    fn add(&mut self, topic: &Topic) {
        match self {
            MemberTopics::Flat(topics) => {
                if let Some((_, n)) = topics.iter_mut().find(|(t, _)| t == topic) {
                    *n += 1;
                } else if topics.len() < FLAT {
                    topics.push((topic.clone(), 1));
                } else {
                    let mut map: Map<Topic, u32> = topics.drain(..).collect();
                    map.insert(topic.clone(), 1);
                    *self = MemberTopics::Map(map);
                }
            }
            MemberTopics::Map(map) => *map.entry(topic.clone()).or_insert(0) += 1,
        }
    }

    /// Takes one connection off `topic`; whether the member has no topic left.
    fn remove(&mut self, topic: &Topic) -> bool {
        match self {
            MemberTopics::Flat(topics) => {
                if let Some(at) = topics.iter().position(|(t, _)| t == topic) {
                    topics[at].1 -= 1;
                    if topics[at].1 == 0 {
                        topics.swap_remove(at);
                    }
                }
                topics.is_empty()
            }
            MemberTopics::Map(map) => {
                if let Some(n) = map.get_mut(topic.as_str()) {
                    *n -= 1;
                    if *n == 0 {
                        map.remove(topic.as_str());
                    }
                }
                map.is_empty()
            }
        }
    }

    fn topics(&self) -> Vec<Topic> {
        match self {
            MemberTopics::Flat(topics) => topics.iter().map(|(t, _)| t.clone()).collect(),
            MemberTopics::Map(map) => map.keys().cloned().collect(),
        }
    }
}

impl MemberShard {
    /// Records one more connection of `member` in `topic`.
    pub(crate) fn add(&mut self, member: &MemberId, topic: &Topic) {
        self.members
            .entry(member.clone())
            .or_insert_with(|| MemberTopics::Flat(SmallVec::new()))
            .add(topic);
    }

    /// Records that one connection of `member` left `topic`.
    pub(crate) fn remove(&mut self, member: &MemberId, topic: &Topic) {
        let Some(topics) = self.members.get_mut(member.as_str()) else {
            return;
        };
        if topics.remove(topic) {
            self.members.remove(member.as_str());
        }
    }

    /// The topics of `member`, sorted, each once.
    pub(crate) fn topics_of(&self, member: &str) -> Vec<Topic> {
        let mut topics = self
            .members
            .get(member)
            .map_or_else(Vec::new, MemberTopics::topics);
        topics.sort_unstable();
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
        for topic in &topics {
            shard.add(&alice, topic);
        }
        // Two connections in t03: one leaving keeps the topic.
        shard.add(&alice, &topics[3]);
        shard.remove(&alice, &topics[3]);
        assert_eq!(shard.topics_of("alice"), topics);
        for topic in &topics[..19] {
            shard.remove(&alice, topic);
        }
        assert_eq!(shard.topics_of("alice"), [topics[19].clone()]);
        shard.remove(&alice, &topics[19]);
        assert!(
            shard.members.is_empty(),
            "a member with no topic is forgotten"
        );
        shard.remove(&alice, &topics[0]);
        assert!(shard.topics_of("alice").is_empty());
    }
}
