//! Events across processes. Every writing script publishes its topic's
//! records on the topic's channel (`PUBLISH` on one server, `SPUBLISH` on a
//! cluster, so a message stays on its shard), in the same atomic step as the
//! change: commit order per topic, and no change without its event.
//!
//! One connection per store (RESP3, its pushes read by one task) holds one
//! subscription per topic that has local subscribers, shared by all of them
//! through a [`TopicBroadcast`]; the last local stream dropped unsubscribes.
//!
//! `subscribe` is exact: the local subscriber is registered when the
//! server's confirmation of its SUBSCRIBE arrives in the connection's push
//! stream (for a topic already subscribed, the store subscribes again: the
//! server confirms again, in order), so it sees exactly the changes
//! committed after that point. When the connection drops (the server
//! restarted, a failover, a killed client) every subscriber gets `Resync`;
//! once a heartbeat gets through again the store subscribes every topic
//! again and sends `Resync` once more, so a subscriber that re-read too
//! early reads again.

use std::collections::{HashMap, HashSet, VecDeque};
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use presence_core::{Error, Event, EventStream, Result, Topic, TopicBroadcast};
use redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo};
use redis::{PushInfo, PushKind, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::conn::{BACKEND, Conn, bounded};
use crate::keys::Keys;
use crate::wire;

/// How often the events connection is checked when nothing else happens.
const HEARTBEAT: Duration = Duration::from_secs(1);

enum Command {
    Subscribe {
        topic: Topic,
        reply: oneshot::Sender<Result<EventStream>>,
    },
    /// A local stream of this topic was dropped.
    Released(Topic),
    /// Deliver what was committed, end every stream, stop.
    Close {
        publisher: Conn,
        done: oneshot::Sender<()>,
    },
}

/// A subscriber waiting for its confirmation.
type Waiting = (Topic, oneshot::Sender<Result<EventStream>>);

pub(crate) struct Events {
    commands: mpsc::UnboundedSender<Command>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Events {
    fn drop(&mut self) {
        if let Some(task) = self
            .task
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            task.abort();
        }
    }
}

pub(crate) struct Settings {
    pub(crate) keys: Keys,
    pub(crate) cluster: bool,
    pub(crate) publish: &'static str,
    pub(crate) event_buffer: usize,
    pub(crate) timeout: Duration,
}

impl Events {
    /// Starts the task reading `connection`'s pushes, which arrive on `pushes`.
    pub(crate) fn start(
        connection: Conn,
        pushes: mpsc::UnboundedReceiver<PushInfo>,
        settings: Settings,
    ) -> Self {
        let (commands, receiver) = mpsc::unbounded_channel();
        let listener = Listener {
            broadcast: TopicBroadcast::new(BACKEND, settings.event_buffer),
            connection,
            settings,
            releases: commands.clone(),
            pending: HashMap::new(),
            subscribed: HashSet::new(),
            disconnected: false,
            nonce: crate::db::random_token(),
            syncs: HashSet::new(),
        };
        let task = tokio::spawn(listener.run(receiver, pushes));
        Self {
            commands,
            task: Mutex::new(Some(task)),
        }
    }

    /// A stream of `topic`'s events from now on.
    pub(crate) async fn subscribe(&self, topic: &Topic, timeout: Duration) -> Result<EventStream> {
        let (reply, stream) = oneshot::channel();
        self.commands
            .send(Command::Subscribe {
                topic: topic.clone(),
                reply,
            })
            .map_err(|_| Error::Closed { backend: BACKEND })?;
        // The subscription itself is bounded by the connection's timeout;
        // this bounds the wait for its turn and its confirmation.
        match tokio::time::timeout(timeout * 3, stream).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::Closed { backend: BACKEND }),
            Err(_) => Err(Error::backend(
                BACKEND,
                crate::conn::TimedOut {
                    what: "confirming a subscription",
                    after: timeout * 3,
                },
            )),
        }
    }

    /// Delivers the events committed so far (published through `publisher`
    /// as sync markers behind them), ends every stream, and stops the task.
    pub(crate) async fn close(&self, publisher: Option<Conn>) {
        if let Some(publisher) = publisher {
            let (done, finished) = oneshot::channel();
            if self
                .commands
                .send(Command::Close { publisher, done })
                .is_ok()
            {
                let _ = finished.await;
            }
        }
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }
}

/// One local stream; dropping it tells the listener, which unsubscribes the
/// topic when it was the last.
struct Tracked {
    inner: EventStream,
    _release: Release,
}

struct Release {
    topic: Topic,
    releases: mpsc::UnboundedSender<Command>,
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = self.releases.send(Command::Released(self.topic.clone()));
    }
}

impl Stream for Tracked {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.inner.poll_next_unpin(cx)
    }
}

struct Listener {
    broadcast: TopicBroadcast,
    connection: Conn,
    settings: Settings,
    releases: mpsc::UnboundedSender<Command>,
    /// Subscribers waiting for their confirmation, per channel, in order.
    pending: HashMap<String, VecDeque<Waiting>>,
    /// Topics this connection is subscribed to.
    subscribed: HashSet<Topic>,
    /// The connection dropped and has not been seen working since.
    disconnected: bool,
    /// This store's sync markers (see `close`).
    nonce: u64,
    /// Topics whose sync marker is still on its way.
    syncs: HashSet<Topic>,
}

impl Listener {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut pushes: mpsc::UnboundedReceiver<PushInfo>,
    ) {
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                push = pushes.recv() => match push {
                    Some(push) => self.dispatch(push),
                    None => break,
                },
                command = commands.recv() => match command {
                    Some(Command::Subscribe { topic, reply }) => self.subscribe(topic, reply).await,
                    Some(Command::Released(topic)) => self.release(topic).await,
                    Some(Command::Close { publisher, done }) => {
                        self.drain(publisher, &mut pushes).await;
                        let _ = done.send(());
                        break;
                    }
                    None => break,
                },
                _ = heartbeat.tick() => self.heartbeat().await,
            }
        }
        self.broadcast.close();
        for (_, waiting) in self.pending.drain() {
            for (_, reply) in waiting {
                let _ = reply.send(Err(Error::Closed { backend: BACKEND }));
            }
        }
    }

    async fn send_subscription(&mut self, command: &'static str, channel: &str) -> Result<()> {
        let cluster = self.settings.cluster;
        let timeout = self.settings.timeout;
        let connection = &mut self.connection;
        match (connection, command) {
            (Conn::Single(c), "subscribe") => {
                bounded("SUBSCRIBE", timeout, c.subscribe(channel)).await
            }
            (Conn::Single(c), _) => bounded("UNSUBSCRIBE", timeout, c.unsubscribe(channel)).await,
            (Conn::Cluster(c), "subscribe") => {
                bounded("SSUBSCRIBE", timeout, c.ssubscribe(channel)).await
            }
            (Conn::Cluster(c), _) => {
                debug_assert!(cluster);
                bounded("SUNSUBSCRIBE", timeout, c.sunsubscribe(channel)).await
            }
        }
    }

    async fn subscribe(&mut self, topic: Topic, reply: oneshot::Sender<Result<EventStream>>) {
        let channel = self.settings.keys.channel(&topic);
        match self.send_subscription("subscribe", &channel).await {
            Ok(()) => {
                self.subscribed.insert(topic.clone());
                self.pending
                    .entry(channel)
                    .or_default()
                    .push_back((topic, reply));
            }
            Err(error) => {
                let _ = reply.send(Err(error));
            }
        }
    }

    async fn release(&mut self, topic: Topic) {
        if self.broadcast.is_subscribed(&topic) || !self.subscribed.contains(&topic) {
            return;
        }
        let channel = self.settings.keys.channel(&topic);
        if self.pending.contains_key(&channel) {
            return;
        }
        self.subscribed.remove(&topic);
        if let Err(error) = self.send_subscription("unsubscribe", &channel).await {
            // The connection is in trouble: it will be replaced, and its
            // subscriptions with it.
            tracing::debug!(error = %error.chain(), "unsubscribing failed");
        }
    }

    fn dispatch(&mut self, push: PushInfo) {
        match push.kind {
            PushKind::Message | PushKind::SMessage => {
                let [channel, payload] = push.data.as_slice() else {
                    return;
                };
                let (Some(channel), Some(payload)) = (wire::bytes(channel), wire::bytes(payload))
                else {
                    return;
                };
                let Some(topic) = std::str::from_utf8(channel)
                    .ok()
                    .and_then(|c| self.settings.keys.topic_of_channel(c))
                    .and_then(|t| Topic::new(t).ok())
                else {
                    return;
                };
                if payload.first() == Some(&b'S') {
                    if payload[1..] == *self.nonce.to_string().as_bytes() {
                        self.syncs.remove(&topic);
                    }
                    return;
                }
                self.broadcast
                    .send(&topic, || wire::decode_events(&topic, payload));
            }
            PushKind::Subscribe | PushKind::SSubscribe => {
                let Some(channel) = push.data.first().and_then(wire::bytes) else {
                    return;
                };
                let Ok(channel) = std::str::from_utf8(channel) else {
                    return;
                };
                let Some(waiting) = self.pending.get_mut(channel) else {
                    return;
                };
                // Everyone waiting on this channel starts here: the server
                // has confirmed it, in stream order.
                for (topic, reply) in waiting.drain(..) {
                    let stream = Tracked {
                        inner: self.broadcast.subscribe(&topic),
                        _release: Release {
                            topic,
                            releases: self.releases.clone(),
                        },
                    };
                    let _ = reply.send(Ok(Box::pin(stream)));
                }
                self.pending.remove(channel);
            }
            PushKind::Disconnection => self.lost(),
            PushKind::SUnsubscribe => {
                // The server dropped a shard channel (its slot moved): what
                // happened meanwhile is unknown; the client subscribes again
                // at the slot's new home.
                if let Some(topic) = push
                    .data
                    .first()
                    .and_then(wire::bytes)
                    .and_then(|c| std::str::from_utf8(c).ok())
                    .and_then(|c| self.settings.keys.topic_of_channel(c))
                    .and_then(|t| Topic::new(t).ok())
                    && self.subscribed.contains(&topic)
                {
                    self.broadcast.send(&topic, || vec![Event::Resync]);
                }
            }
            _ => {}
        }
    }

    fn lost(&mut self) {
        if !self.disconnected {
            tracing::warn!("the redis events connection dropped; subscribers get Resync");
            self.disconnected = true;
            self.broadcast.resync_all();
        }
    }

    async fn ping(&mut self) -> Result<()> {
        let timeout = self.settings.timeout;
        let ping = redis::cmd("PING");
        match &mut self.connection {
            Conn::Single(c) => {
                bounded("PING", timeout, ping.query_async::<Value>(c)).await?;
            }
            Conn::Cluster(c) => {
                let routing = RoutingInfo::MultiNode((
                    MultipleNodeRoutingInfo::AllMasters,
                    Some(ResponsePolicy::AllSucceeded),
                ));
                bounded("PING", timeout, c.route_command(ping, routing)).await?;
            }
        }
        Ok(())
    }

    async fn heartbeat(&mut self) {
        match self.ping().await {
            Err(error) => {
                if !self.disconnected {
                    tracing::warn!(error = %error.chain(), "the redis events connection does not answer");
                }
                self.lost();
            }
            Ok(()) if self.disconnected => {
                // Back: make sure every topic is subscribed on the new
                // connection, then have every subscriber read again.
                let topics: Vec<Topic> = self.subscribed.iter().cloned().collect();
                for topic in topics {
                    let channel = self.settings.keys.channel(&topic);
                    if self.send_subscription("subscribe", &channel).await.is_err() {
                        return;
                    }
                }
                tracing::warn!("the redis events connection is back; subscribers get Resync");
                self.disconnected = false;
                self.broadcast.resync_all();
            }
            Ok(()) => {}
        }
    }

    /// Publishes a sync marker on every topic that has subscribers, behind
    /// every change committed so far, and delivers pushes until all markers
    /// are back (or the timeout passes).
    async fn drain(&mut self, mut publisher: Conn, pushes: &mut mpsc::UnboundedReceiver<PushInfo>) {
        let marker = format!("S{}", self.nonce);
        let topics: Vec<Topic> = self
            .subscribed
            .iter()
            .filter(|t| self.broadcast.is_subscribed(t))
            .cloned()
            .collect();
        let deadline = Instant::now() + self.settings.timeout;
        for topic in topics {
            let channel = self.settings.keys.channel(&topic);
            let mut publish = redis::cmd(self.settings.publish);
            publish.arg(&channel).arg(&marker);
            let sent = bounded(
                "publishing a sync marker",
                self.settings.timeout,
                publish.query_async::<Value>(&mut publisher),
            )
            .await;
            if sent.is_ok() {
                self.syncs.insert(topic);
            }
        }
        while !self.syncs.is_empty() {
            match tokio::time::timeout_at(deadline.into(), pushes.recv()).await {
                Ok(Some(push)) => self.dispatch(push),
                _ => break,
            }
        }
    }
}
