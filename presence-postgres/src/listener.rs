//! Events across processes: one connection per store LISTENs on the schema's
//! channel and hands each notification to the local subscribers of its topic.
//!
//! Postgres delivers notifications in commit order, so subscribers see every
//! process's changes in commit order. When the connection is lost, the
//! listener reconnects by itself and sends `Resync` to every subscriber (what
//! happened in between is unknown).
//!
//! `subscribe` is exact: it registers the subscriber from inside the
//! notification stream, at the point where a sync notification it sent
//! arrives, so the subscriber sees exactly the changes committed after it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use presence_core::{Error, EventStream, Result, Topic, TopicBroadcast};
use tokio::sync::{oneshot, watch};
use tokio_postgres::{AsyncMessage, NoTls};

use crate::wire;

/// Subscriptions waiting for their sync notification.
type Pending = HashMap<u64, (Topic, oneshot::Sender<EventStream>)>;

pub(crate) struct Listener {
    state: Arc<Mutex<State>>,
    /// Whether the listening connection is up (and how often it came up).
    connected: watch::Receiver<(bool, u64)>,
    /// Sync tokens of this store start here, so other stores' syncs on the
    /// same channel never match ours.
    nonce: u64,
    task: tokio::task::JoinHandle<()>,
}

struct State {
    channels: TopicBroadcast,
    pending: Pending,
    next_token: u64,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Listener {
    /// Starts listening on `channel`; returns once the first LISTEN is in place.
    pub(crate) async fn start(
        pg: tokio_postgres::Config,
        channel: String,
        event_buffer: usize,
    ) -> Result<Self> {
        let state = Arc::new(Mutex::new(State {
            channels: TopicBroadcast::new("postgres", event_buffer),
            pending: HashMap::new(),
            next_token: 0,
        }));
        let (up, mut connected) = watch::channel((false, 0));
        let task = tokio::spawn(listen(pg, channel, state.clone(), up));
        let first =
            tokio::time::timeout(Duration::from_secs(30), connected.wait_for(|(up, _)| *up))
                .await
                .is_ok_and(|seen| seen.is_ok());
        if !first {
            task.abort();
            return Err(Error::backend(
                "postgres",
                "the event listener could not connect within 30 s",
            ));
        }
        let nonce = std::hash::BuildHasher::hash_one(
            &std::collections::hash_map::RandomState::new(),
            std::process::id(),
        );
        Ok(Self {
            state,
            connected,
            nonce,
            task,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a subscription and returns the sync token to NOTIFY; the
    /// stream arrives through the receiver when the token comes back.
    pub(crate) fn prepare(&self, topic: &Topic) -> (String, oneshot::Receiver<EventStream>) {
        let (sender, receiver) = oneshot::channel();
        let mut state = self.lock();
        let token = self.nonce.wrapping_add(state.next_token);
        state.next_token += 1;
        state.pending.insert(token, (topic.clone(), sender));
        (format!("sync:{token}"), receiver)
    }

    /// Ends every subscriber's stream and stops listening.
    pub(crate) fn close(&self) {
        self.lock().channels.close();
        self.task.abort();
    }

    /// Whether the listening connection is up now.
    pub(crate) fn is_connected(&self) -> bool {
        self.connected.borrow().0
    }
}

async fn listen(
    pg: tokio_postgres::Config,
    channel: String,
    state: Arc<Mutex<State>>,
    up: watch::Sender<(bool, u64)>,
) {
    let mut backoff = Duration::from_millis(50);
    let mut sessions = 0u64;
    loop {
        match pg.connect(NoTls).await {
            Ok((client, mut connection)) => {
                let (notes_tx, mut notes) = tokio::sync::mpsc::unbounded_channel();
                let driver = tokio::spawn(async move {
                    let mut messages =
                        futures::stream::poll_fn(move |cx| connection.poll_message(cx));
                    while let Some(Ok(message)) = messages.next().await {
                        if let AsyncMessage::Notification(note) = message {
                            let _ = notes_tx.send(note.payload().to_owned());
                        }
                    }
                });
                if client
                    .batch_execute(&format!("LISTEN {channel}"))
                    .await
                    .is_ok()
                {
                    backoff = Duration::from_millis(50);
                    sessions += 1;
                    {
                        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
                        if sessions > 1 {
                            // Whatever happened while we were away is unknown.
                            state.channels.resync_all();
                        }
                        // Syncs sent while we were away are lost: register now.
                        let pending: Vec<_> = state.pending.drain().collect();
                        for (_, (topic, sender)) in pending {
                            let _ = sender.send(state.channels.subscribe(&topic));
                        }
                    }
                    let _ = up.send((true, sessions));
                    while let Some(payload) = notes.recv().await {
                        dispatch(&state, &payload);
                    }
                }
                let _ = up.send((false, sessions));
                driver.abort();
                drop(client);
            }
            Err(_) => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Routes one notification: `sync:<token>` from a `subscribe`, or events
/// (see `wire`).
fn dispatch(state: &Mutex<State>, payload: &str) {
    let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(token) = payload.strip_prefix("sync:") {
        if let Some((topic, sender)) = token
            .parse()
            .ok()
            .and_then(|t: u64| state.pending.remove(&t))
        {
            let _ = sender.send(state.channels.subscribe(&topic));
        }
        return;
    }
    for (topic, json) in wire::decode(payload) {
        let Ok(topic) = Topic::new(topic) else {
            continue;
        };
        // Only events someone here listens to are parsed.
        state.channels.send(&topic, || vec![wire::parse(json)]);
    }
}
