//! Bounded per-topic event fan-out, shared by every backend.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Waker};

use futures::Stream;

use crate::{Event, EventStream, Topic, metrics};

/// The subscribers of each topic. Each subscriber has a queue of its own,
/// bounded by `buffer`: one that falls more than `buffer` events behind gets
/// [`Event::Resync`] and goes on from the oldest event still queued; senders
/// never wait.
///
/// Nothing is allocated up front: an idle subscription costs a few hundred
/// bytes (BENCHMARKS.md), and a topic's entry is removed as soon as its last
/// stream is dropped, so topics subscribed once and never written again
/// leave nothing behind.
///
/// Cloning is cheap; clones share the subscribers. Order across calls is
/// the caller's: a backend sends under the same lock as the changes it
/// reports (or from its one writer), so subscribers see commit order.
#[derive(Clone, Debug)]
pub struct TopicBroadcast {
    registry: Arc<Registry>,
}

#[derive(Debug)]
struct Registry {
    backend: &'static str,
    buffer: usize,
    state: Mutex<RegistryState>,
}

#[derive(Debug, Default)]
struct RegistryState {
    topics: HashMap<Topic, Vec<Arc<Subscriber>>>,
    closed: bool,
}

/// One subscription's queue.
#[derive(Debug, Default)]
struct Subscriber {
    queue: Mutex<Queue>,
}

#[derive(Debug, Default)]
struct Queue {
    events: VecDeque<Event>,
    /// Events were dropped since the subscriber last read: it gets `Resync`.
    lagged: bool,
    closed: bool,
    waker: Option<Waker>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks, and the data stays
    // consistent if something did: keep serving.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Subscriber {
    /// Queues `events`, dropping the oldest past `buffer`; returns the waker
    /// to wake once the caller's locks are released.
    fn push(&self, events: impl IntoIterator<Item = Event>, buffer: usize) -> Option<Waker> {
        let mut queue = lock(&self.queue);
        for event in events {
            if queue.events.len() >= buffer {
                queue.events.pop_front();
                queue.lagged = true;
            }
            queue.events.push_back(event);
        }
        queue.waker.take()
    }

    fn close(&self) -> Option<Waker> {
        let mut queue = lock(&self.queue);
        queue.closed = true;
        queue.waker.take()
    }
}

impl TopicBroadcast {
    /// No subscribers yet; each subscriber will queue up to `buffer` events
    /// (at least 1). `backend` names the store in metrics.
    pub fn new(backend: &'static str, buffer: usize) -> Self {
        Self {
            registry: Arc::new(Registry {
                backend,
                buffer: buffer.max(1),
                state: Mutex::default(),
            }),
        }
    }

    /// A stream of `topic`'s events from now on. After [`close`](Self::close)
    /// the stream is already ended.
    pub fn subscribe(&self, topic: &Topic) -> EventStream {
        let subscriber = Arc::new(Subscriber::default());
        let mut state = lock(&self.registry.state);
        if state.closed {
            lock(&subscriber.queue).closed = true;
        } else {
            state
                .topics
                .entry(topic.clone())
                .or_default()
                .push(subscriber.clone());
        }
        drop(state);
        Box::pin(Subscription {
            topic: topic.clone(),
            subscriber,
            registry: Arc::downgrade(&self.registry),
            backend: self.registry.backend,
        })
    }

    /// Whether anybody listens to `topic`, so callers can skip building events.
    pub fn is_subscribed(&self, topic: &Topic) -> bool {
        lock(&self.registry.state).topics.contains_key(topic)
    }

    /// How many topics have at least one open stream.
    pub fn subscribed_topics(&self) -> usize {
        lock(&self.registry.state).topics.len()
    }

    /// Sends the events `make` builds to `topic`'s subscribers; `make` runs
    /// only when there are any.
    pub fn send(&self, topic: &Topic, make: impl FnOnce() -> Vec<Event>) {
        let wakers: Vec<Waker> = {
            let state = lock(&self.registry.state);
            let Some(subscribers) = state.topics.get(topic) else {
                return;
            };
            let events = make();
            if events.is_empty() {
                return;
            }
            let buffer = self.registry.buffer;
            let (last, others) = subscribers.split_last().expect("never empty");
            let mut wakers: Vec<Waker> = others
                .iter()
                .filter_map(|subscriber| subscriber.push(events.iter().cloned(), buffer))
                .collect();
            wakers.extend(last.push(events, buffer));
            wakers
        };
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Sends [`Event::Resync`] to every subscribed topic: for a backend that
    /// lost its event source and cannot tell what was missed.
    pub fn resync_all(&self) {
        let wakers: Vec<Waker> = {
            let state = lock(&self.registry.state);
            if !state.topics.is_empty() {
                metrics::resync(self.registry.backend);
            }
            state
                .topics
                .values()
                .flatten()
                .filter_map(|subscriber| subscriber.push([Event::Resync], self.registry.buffer))
                .collect()
        };
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Sends each event to the subscribers of its own topic, in order.
    pub fn send_all(&self, events: Vec<Event>) {
        let mut events = events.into_iter().peekable();
        while let Some(event) = events.next() {
            let Some(topic) = event.topic().cloned() else {
                continue;
            };
            // Consecutive events of one topic go out in one send.
            let mut run = vec![event];
            while let Some(next) = events.next_if(|next| next.topic() == Some(&topic)) {
                run.push(next);
            }
            self.send(&topic, || run);
        }
    }

    /// Ends every stream, once it has yielded what is already queued, and
    /// makes later subscriptions end at once: for a store being closed.
    pub fn close(&self) {
        let wakers: Vec<Waker> = {
            let mut state = lock(&self.registry.state);
            state.closed = true;
            std::mem::take(&mut state.topics)
                .into_values()
                .flatten()
                .filter_map(|subscriber| subscriber.close())
                .collect()
        };
        wakers.into_iter().for_each(Waker::wake);
    }
}

/// One subscriber's stream; dropping it unregisters it, and its topic with
/// it when it was the last.
struct Subscription {
    topic: Topic,
    subscriber: Arc<Subscriber>,
    registry: Weak<Registry>,
    backend: &'static str,
}

impl Stream for Subscription {
    type Item = Event;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let mut queue = lock(&self.subscriber.queue);
        if queue.lagged {
            queue.lagged = false;
            metrics::resync(self.backend);
            return Poll::Ready(Some(Event::Resync));
        }
        if let Some(event) = queue.events.pop_front() {
            return Poll::Ready(Some(event));
        }
        if queue.closed {
            return Poll::Ready(None);
        }
        if !queue
            .waker
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()))
        {
            queue.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let Some(registry) = self.registry.upgrade() else {
            return;
        };
        let mut state = lock(&registry.state);
        if let Some(subscribers) = state.topics.get_mut(&self.topic) {
            subscribers.retain(|other| !Arc::ptr_eq(other, &self.subscriber));
            if subscribers.is_empty() {
                state.topics.remove(&self.topic);
                // The map keeps the room of its busiest moment; give it back
                // once most of it is empty (amortized: it halves at most).
                let (len, capacity) = (state.topics.len(), state.topics.capacity());
                if capacity > 64 && len * 4 < capacity {
                    state.topics.shrink_to(len * 2);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Entry, Meta, PresenceKey, Timestamp};
    use futures::{FutureExt, StreamExt};

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
        let channels = TopicBroadcast::new("test", 2);
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

    #[tokio::test]
    async fn every_subscriber_gets_every_event_in_order() {
        let channels = TopicBroadcast::new("test", 16);
        let room = Topic::new("room").unwrap();
        let mut streams: Vec<EventStream> = (0..3).map(|_| channels.subscribe(&room)).collect();
        channels.send_all(vec![
            join("room", "a"),
            join("hall", "x"),
            join("room", "b"),
        ]);
        for stream in &mut streams {
            assert_eq!(stream.next().await, Some(join("room", "a")));
            assert_eq!(stream.next().await, Some(join("room", "b")));
        }
    }

    #[test]
    fn the_last_dropped_stream_releases_its_topic() {
        let channels = TopicBroadcast::new("test", 4);
        let room = Topic::new("room").unwrap();
        let first = channels.subscribe(&room);
        let second = channels.subscribe(&room);
        drop(first);
        assert!(channels.is_subscribed(&room));
        drop(second);
        assert!(!channels.is_subscribed(&room));
        assert_eq!(channels.subscribed_topics(), 0);
        channels.send(&room, || panic!("nobody listens: no events are built"));

        for i in 0..10_000 {
            drop(channels.subscribe(&Topic::new(format!("t{i}")).unwrap()));
        }
        assert_eq!(channels.subscribed_topics(), 0);
    }

    #[tokio::test]
    async fn close_ends_streams_after_what_was_queued() {
        let channels = TopicBroadcast::new("test", 4);
        let room = Topic::new("room").unwrap();
        let mut stream = channels.subscribe(&room);
        channels.send_all(vec![join("room", "a")]);
        channels.close();
        assert_eq!(stream.next().await, Some(join("room", "a")));
        assert_eq!(stream.next().await, None);
        let mut late = channels.subscribe(&room);
        assert_eq!(late.next().await, None);
        assert_eq!(channels.subscribed_topics(), 0);
    }

    #[tokio::test]
    async fn a_waiting_subscriber_is_woken() {
        let channels = TopicBroadcast::new("test", 4);
        let room = Topic::new("room").unwrap();
        let mut stream = channels.subscribe(&room);
        let sender = channels.clone();
        let waiter = tokio::spawn(async move { stream.next().await });
        tokio::task::yield_now().await;
        sender.send_all(vec![join("room", "a")]);
        assert_eq!(waiter.await.unwrap(), Some(join("room", "a")));
    }
}
