//! Events across processes: one connection per store LISTENs on the schema's
//! channel and hands each notification to the local subscribers of its topic.
//!
//! Postgres delivers notifications in commit order, so subscribers see every
//! process's changes in commit order. When the connection is lost (or stops
//! answering its pings), the listener reconnects by itself and sends
//! `Resync` to every subscriber (what happened in between is unknown).
//! Every connect, LISTEN and ping is bounded by the store's timeouts, and
//! every failure is logged at `warn` with its cause.
//!
//! `subscribe` is exact: it registers the subscriber from inside the
//! notification stream, at the point where a sync notification it sent
//! arrives, so the subscriber sees exactly the changes committed after it.
//! `close` uses the same kind of notification as a barrier: once it comes
//! back, everything committed before has been delivered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use presence_core::{Error, EventStream, Result, Topic, TopicBroadcast};
use tokio::sync::{oneshot, watch};

use crate::connector::{Connector, Session};
use crate::errors::{BACKEND, Timeout, chain, db};
use crate::wire;

/// What a sync notification was sent for.
enum Waiting {
    /// A `subscribe`: its stream starts here.
    Subscribe(Topic, oneshot::Sender<EventStream>),
    /// A barrier: everything committed before it has been dispatched.
    Barrier(oneshot::Sender<()>),
}

/// The bounds the listener works within (from the store's config).
#[derive(Clone, Copy)]
pub(crate) struct Bounds {
    pub(crate) connect: Duration,
    pub(crate) call: Duration,
    pub(crate) ping: Duration,
}

pub(crate) struct Listener {
    state: Arc<Mutex<State>>,
    /// Whether the listening connection is up (and how often it came up).
    connected: watch::Receiver<(bool, u64)>,
    /// Sync tokens of this store start here, so other stores' syncs on the
    /// same channel never match ours.
    nonce: u64,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

struct State {
    channels: TopicBroadcast,
    pending: HashMap<u64, Waiting>,
    next_token: u64,
    /// Why the last connection attempt failed, for `start`'s error.
    last_failure: Option<Error>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
    }
}

impl Listener {
    /// Starts listening on `channel`; returns once the first LISTEN is in
    /// place, or fails after `first_within` with the last failure as cause.
    pub(crate) async fn start(
        connector: Connector,
        pg: tokio_postgres::Config,
        channel: String,
        event_buffer: usize,
        bounds: Bounds,
        first_within: Duration,
    ) -> Result<Self> {
        let state = Arc::new(Mutex::new(State {
            channels: TopicBroadcast::new(BACKEND, event_buffer),
            pending: HashMap::new(),
            next_token: 0,
            last_failure: None,
        }));
        let (up, mut connected) = watch::channel((false, 0));
        let task = tokio::spawn(listen(connector, pg, channel, state.clone(), up, bounds));
        let first = tokio::time::timeout(first_within, connected.wait_for(|(up, _)| *up))
            .await
            .is_ok_and(|seen| seen.is_ok());
        if !first {
            task.abort();
            let cause = state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .last_failure
                .take();
            return Err(Error::backend(
                BACKEND,
                Timeout {
                    what: "the event listener's first connection and LISTEN",
                    after: first_within,
                    setting: "listen_timeout",
                    cause,
                },
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
            task: Mutex::new(Some(task)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn register(&self, waiting: Waiting) -> (u64, String) {
        let mut state = self.lock();
        let token = self.nonce.wrapping_add(state.next_token);
        state.next_token += 1;
        state.pending.insert(token, waiting);
        (token, format!("sync:{token}"))
    }

    /// Registers a subscription; returns its token, the sync payload to
    /// NOTIFY, and the receiver the stream arrives through when it comes back.
    pub(crate) fn prepare(&self, topic: &Topic) -> (u64, String, oneshot::Receiver<EventStream>) {
        let (sender, receiver) = oneshot::channel();
        let (token, payload) = self.register(Waiting::Subscribe(topic.clone(), sender));
        (token, payload, receiver)
    }

    /// Registers a barrier; same shape as [`prepare`](Self::prepare).
    pub(crate) fn barrier(&self) -> (u64, String, oneshot::Receiver<()>) {
        let (sender, receiver) = oneshot::channel();
        let (token, payload) = self.register(Waiting::Barrier(sender));
        (token, payload, receiver)
    }

    /// Drops a registration whose sync will not come (it was never sent,
    /// or its caller stopped waiting).
    pub(crate) fn forget(&self, token: u64) {
        self.lock().pending.remove(&token);
    }

    /// Ends every subscriber's stream, stops the listening task and waits
    /// for it.
    pub(crate) async fn close(&self) {
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
        let mut state = self.lock();
        state.pending.clear();
        state.channels.close();
    }

    /// Whether the listening connection is up now.
    pub(crate) fn is_connected(&self) -> bool {
        self.connected.borrow().0
    }
}

async fn listen(
    connector: Connector,
    pg: tokio_postgres::Config,
    channel: String,
    state: Arc<Mutex<State>>,
    up: watch::Sender<(bool, u64)>,
    bounds: Bounds,
) {
    let mut backoff = Duration::from_millis(50);
    let mut sessions = 0u64;
    loop {
        match open(&connector, &pg, &channel, bounds).await {
            Ok(mut session) => {
                backoff = Duration::from_millis(50);
                sessions += 1;
                if sessions > 1 {
                    tracing::warn!(channel, "postgres event listener reconnected");
                }
                {
                    let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
                    state.last_failure = None;
                    if sessions > 1 {
                        // Whatever happened while we were away is unknown.
                        state.channels.resync_all();
                    }
                    // Syncs sent while we were away are lost: answer now.
                    let pending: Vec<_> = state.pending.drain().collect();
                    for (_, waiting) in pending {
                        complete(&mut state, waiting);
                    }
                }
                let _ = up.send((true, sessions));
                let lost = serve(&mut session, &state, bounds).await;
                tracing::warn!(channel, error = %lost, "postgres event listener lost its connection; reconnecting");
                let _ = up.send((false, sessions));
                drop(session);
            }
            Err(error) => {
                tracing::warn!(
                    channel,
                    error = %error.chain(),
                    retry_in_ms = backoff.as_millis() as u64,
                    "postgres event listener cannot connect"
                );
                state.lock().unwrap_or_else(|e| e.into_inner()).last_failure = Some(error);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Connects and LISTENs, each within its bound.
async fn open(
    connector: &Connector,
    pg: &tokio_postgres::Config,
    channel: &str,
    bounds: Bounds,
) -> Result<Session> {
    let session = tokio::time::timeout(bounds.connect, connector.connect(pg.clone()))
        .await
        .map_err(|_| {
            crate::errors::timeout(
                "connecting the event listener",
                bounds.connect,
                "connect_timeout",
            )
        })?
        .map_err(db)?;
    let listen = tokio::time::timeout(
        bounds.call,
        session.client.batch_execute(&format!("LISTEN {channel}")),
    )
    .await;
    match listen {
        Ok(Ok(())) => Ok(session),
        Ok(Err(error)) => Err(db(error)),
        Err(_) => Err(crate::errors::timeout(
            "the event listener's LISTEN",
            bounds.call,
            "call_timeout",
        )),
    }
}

/// Dispatches notifications until the connection is lost or a ping goes
/// unanswered; returns why it stopped.
async fn serve(session: &mut Session, state: &Mutex<State>, bounds: Bounds) -> String {
    let mut ping = tokio::time::interval(bounds.ping);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    loop {
        tokio::select! {
            note = session.notes.recv() => match note {
                Some(Ok(payload)) => dispatch(state, &payload),
                Some(Err(error)) => return chain(&error),
                None => return "the connection closed".to_owned(),
            },
            _ = ping.tick() => {
                match tokio::time::timeout(bounds.call, session.client.simple_query("")).await {
                    Ok(Ok(_)) => tracing::trace!("postgres event listener ping answered"),
                    Ok(Err(error)) => return chain(&error),
                    Err(_) => {
                        return format!(
                            "a ping went unanswered for {:?} (the store's `call_timeout`)",
                            bounds.call
                        );
                    }
                }
            }
        }
    }
}

fn complete(state: &mut State, waiting: Waiting) {
    match waiting {
        Waiting::Subscribe(topic, sender) => {
            let _ = sender.send(state.channels.subscribe(&topic));
        }
        Waiting::Barrier(sender) => {
            let _ = sender.send(());
        }
    }
}

/// Routes one notification: `sync:<token>` from a `subscribe` or a
/// barrier, or events (see `wire`).
fn dispatch(state: &Mutex<State>, payload: &str) {
    let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(token) = payload.strip_prefix("sync:") {
        if let Some(waiting) = token
            .parse()
            .ok()
            .and_then(|t: u64| state.pending.remove(&t))
        {
            complete(&mut state, waiting);
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
