//! The member index: which topics each `(member, connection)` is present in,
//! so `disconnect` and `topics_of` never scan the topics.

use presence_core::{ConnectionId, MemberId, PresenceKey, Topic};
use smallvec::SmallVec;

use crate::topic::Map;

/// The members whose ids hash to one shard.
#[derive(Default)]
pub(crate) struct MemberShard {
    /// Per member, its `(connection, topic)` pairs. A member has few entries
    /// in practice, so a flat list beats a map of maps in memory and speed.
    members: Map<MemberId, SmallVec<[(ConnectionId, Topic); 1]>>,
}

impl MemberShard {
    pub(crate) fn add(&mut self, key: &PresenceKey) {
        self.members
            .entry(key.member.clone())
            .or_default()
            .push((key.connection.clone(), key.topic.clone()));
    }

    pub(crate) fn remove(&mut self, key: &PresenceKey) {
        let Some(pairs) = self.members.get_mut(key.member.as_str()) else {
            return;
        };
        if let Some(at) = pairs
            .iter()
            .position(|(connection, topic)| *connection == key.connection && *topic == key.topic)
        {
            pairs.swap_remove(at);
        }
        if pairs.is_empty() {
            self.members.remove(key.member.as_str());
        }
    }

    /// The topics of `member`, sorted, each once.
    pub(crate) fn topics_of(&self, member: &str) -> Vec<Topic> {
        let mut topics: Vec<Topic> = self
            .members
            .get(member)
            .into_iter()
            .flatten()
            .map(|(_, topic)| topic.clone())
            .collect();
        topics.sort_unstable();
        topics.dedup();
        topics
    }

    /// The topics where `member` is present through `connection`.
    pub(crate) fn topics_of_connection(&self, member: &str, connection: &str) -> Vec<Topic> {
        self.members
            .get(member)
            .into_iter()
            .flatten()
            .filter(|(conn, _)| conn.as_str() == connection)
            .map(|(_, topic)| topic.clone())
            .collect()
    }
}
