//! The member index: which topics each member is present in, so `disconnect`
//! and `topics_of` visit only the member's own topics, never all of them.

use presence_core::{MemberId, Topic};
use smallvec::SmallVec;

use crate::topic::Map;

/// The members whose ids hash to one shard.
#[derive(Default)]
pub(crate) struct MemberShard {
    /// Per member, one topic per connection it has there (a topic repeats
    /// when the member has several connections in it). Most members are in
    /// few topics, so a flat list beats a map of maps in memory and speed;
    /// connection ids are not kept because `disconnect` checks the topic.
    members: Map<MemberId, SmallVec<[Topic; 1]>>,
}

impl MemberShard {
    pub(crate) fn add(&mut self, member: &MemberId, topic: &Topic) {
        self.members
            .entry(member.clone())
            .or_default()
            .push(topic.clone());
    }

    pub(crate) fn remove(&mut self, member: &MemberId, topic: &Topic) {
        let Some(topics) = self.members.get_mut(member.as_str()) else {
            return;
        };
        if let Some(at) = topics.iter().position(|t| t == topic) {
            topics.swap_remove(at);
        }
        if topics.is_empty() {
            self.members.remove(member.as_str());
        }
    }

    /// The topics of `member`, sorted, each once.
    pub(crate) fn topics_of(&self, member: &str) -> Vec<Topic> {
        let mut topics: Vec<Topic> = self
            .members
            .get(member)
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        topics.sort_unstable();
        topics.dedup();
        topics
    }
}
