//! Bounded per-topic event channels, shared by every backend.

use std::collections::HashMap;

use futures::StreamExt;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;

use crate::{Event, EventStream, Topic};

/// The subscribers of each topic: one bounded broadcast channel per
/// subscribed topic. A subscriber that falls more than `buffer` events behind
/// gets [`Event::Resync`] and goes on from the oldest event still buffered;
/// senders never wait. A topic's channel is dropped once its last subscriber
/// is gone.
///
/// Not locked itself: a backend keeps it under the same lock as the changes
/// it reports (or sends from its one writer), so subscribers see commit order.
#[derive(Debug)]
pub struct TopicBroadcast {
    channels: HashMap<Topic, broadcast::Sender<Event>>,
    buffer: usize,
}

impl TopicBroadcast {
    /// No subscribers yet; each topic will buffer `buffer` events (at least 1).
    pub fn new(buffer: usize) -> Self {
        Self {
            channels: HashMap::new(),
            buffer: buffer.max(1),
        }
    }

    /// A stream of `topic`'s events from now on.
    pub fn subscribe(&mut self, topic: &Topic) -> EventStream {
        let receiver = self
            .channels
            .entry(topic.clone())
            .or_insert_with(|| broadcast::channel(self.buffer).0)
            .subscribe();
        // A receiver that lagged lost events: tell the subscriber to re-read.
        BroadcastStream::new(receiver)
            .map(|event| event.unwrap_or(Event::Resync))
            .boxed()
    }

    /// Whether anybody listens to `topic`, so callers can skip building events.
    pub fn is_subscribed(&self, topic: &Topic) -> bool {
        !self.channels.is_empty() && self.channels.contains_key(topic)
    }

    /// Sends the events `make` builds to `topic`'s subscribers; `make` runs
    /// only when there are any.
    pub fn send(&mut self, topic: &Topic, make: impl FnOnce() -> Vec<Event>) {
        if !self.is_subscribed(topic) {
            return;
        }
        let sender = &self.channels[topic];
        if sender.receiver_count() == 0 {
            self.channels.remove(topic);
            return;
        }
        for event in make() {
            // An error means every receiver was dropped since the check.
            let _ = sender.send(event);
        }
    }

    /// Sends [`Event::Resync`] to every subscribed topic: for a backend that
    /// lost its event source and cannot tell what was missed.
    pub fn resync_all(&mut self) {
        let topics: Vec<Topic> = self.channels.keys().cloned().collect();
        for topic in topics {
            self.send(&topic, || vec![Event::Resync]);
        }
    }

    /// Sends each event to the subscribers of its own topic, in order.
    pub fn send_all(&mut self, events: Vec<Event>) {
        for event in events {
            if let Some(topic) = event.topic().cloned() {
                self.send(&topic, || vec![event]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Entry, Meta, PresenceKey, Timestamp};
    use futures::FutureExt;

    fn join(topic: &str, member: &str) -> Event {
        Event::Join {
            entry: Entry {
                key: PresenceKey::new(topic, member, "c").unwrap(),
                meta: Meta::new(),
                joined_at: Timestamp::EPOCH,
                last_seen_at: Timestamp::EPOCH,
            },
            first_for_member: true,
        }
    }

    #[tokio::test]
    async fn events_reach_their_topic_and_overflow_becomes_resync() {
        let mut channels = TopicBroadcast::new(2);
        let room = Topic::new("room").unwrap();
        let mut stream = channels.subscribe(&room);
        channels.send_all(vec![join("hall", "x"), join("room", "a")]);
        assert_eq!(stream.next().await, Some(join("room", "a")));
        for m in ["b", "c", "d"] {
            channels.send_all(vec![join("room", m)]);
        }
        assert_eq!(stream.next().await, Some(Event::Resync));
        assert_eq!(stream.next().await, Some(join("room", "c")));
        assert_eq!(stream.next().await, Some(join("room", "d")));
        assert!(stream.next().now_or_never().is_none());
    }

    #[test]
    fn a_topic_without_subscribers_is_forgotten() {
        let mut channels = TopicBroadcast::new(4);
        let room = Topic::new("room").unwrap();
        drop(channels.subscribe(&room));
        assert!(channels.is_subscribed(&room));
        channels.send(&room, || panic!("nobody listens: no events are built"));
        assert!(!channels.is_subscribed(&room));
    }
}
