//! `LiveMembers`: a topic's member list kept current from its events.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::sync;
use futures::FutureExt;
use futures::stream::{BoxStream, StreamExt};
use presence_core::{
    ConnectionId, Counts, Entry, Event, EventStream, Member, MemberId, PresenceStore, Result, Topic,
};
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::sweeper::positive;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

/// A change of a [`LiveMembers`] list, member by member.
#[derive(Clone, PartialEq, Debug, Default, Serialize)]
pub struct Diff {
    /// Members who joined or changed (a connection joined, left or changed
    /// meta), each with its whole view now: upsert them.
    pub joins: Vec<Member>,
    /// Members who are gone (their last connection left), each with its last
    /// view: remove them.
    pub leaves: Vec<Member>,
    /// The topic's counts after the change.
    pub counts: Counts,
}

impl Diff {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.joins.is_empty() && self.leaves.is_empty()
    }
}

/// What [`LiveMembers::updates`] yields: the whole list first, then diffs,
/// like Phoenix's `presence_state` and `presence_diff`.
#[derive(Clone, PartialEq, Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LiveUpdate {
    /// The whole list: replace what you hold. Sent first, and again if the
    /// reader fell so far behind that diffs were dropped.
    State {
        /// Every member, in the store's order.
        members: Vec<Member>,
        /// The counts.
        counts: Counts,
    },
    /// A change to apply to the list you hold.
    Diff(Diff),
}

/// The updates of a [`LiveMembers`]; see [`LiveMembers::updates`].
pub type LiveUpdates = BoxStream<'static, LiveUpdate>;

/// The diffs buffered for a slow reader of [`LiveMembers::updates`] before it
/// is sent the whole state instead.
const UPDATE_BUFFER: usize = 256;

/// A topic's members, read once and kept current from its events.
///
/// It subscribes first, then reads the snapshot, then applies each event on
/// top. Events are whole entries (a join or update carries the entry, a
/// leave the departed one), so the events that raced the snapshot re-apply
/// harmlessly and the list converges to the store's. On
/// [`Event::Resync`] it reads the snapshot again and emits the difference.
/// Membership, connections, meta and counts follow the store exactly once
/// the events are applied; `last_seen_at` only moves with events, since
/// heartbeats emit none.
///
/// On a store whose events do not cross processes (memory, SQLite) and that
/// other processes write, [`LiveMembers::start_refreshing`] also re-reads the
/// snapshot on an interval.
///
/// ```
/// # use std::sync::Arc;
/// # use presence::{LiveMembers, Meta, PresenceKey, PresenceStore, Topic, memory::MemoryStore};
/// # async fn run() -> presence::Result<()> {
/// let store: Arc<dyn PresenceStore> = Arc::new(MemoryStore::new());
/// let live = LiveMembers::start(store.clone(), Topic::new("/chat/1")?).await?;
/// store.join(&PresenceKey::new("/chat/1", "alice", "tab")?, Meta::new()).await?;
/// live.settled().await; // or read `live.updates()` as it changes
/// assert_eq!(live.counts().members, 1);
/// # Ok(()) }
/// ```
pub struct LiveMembers {
    shared: Arc<Shared>,
    commands: mpsc::UnboundedSender<Command>,
    stop: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    store: Arc<dyn PresenceStore>,
    topic: Topic,
    state: RwLock<State>,
    updates: broadcast::Sender<Diff>,
    resyncs: AtomicU64,
}

/// Requests to the background task.
enum Command {
    Resync,
    Settled(oneshot::Sender<()>),
}

/// The entries by member, then connection.
#[derive(Default)]
struct State {
    members: BTreeMap<MemberId, BTreeMap<ConnectionId, Entry>>,
    connections: u64,
}

impl State {
    fn from_members(members: Vec<Member>) -> Self {
        let mut state = State::default();
        for member in members {
            for entry in member.entries() {
                state.upsert(entry);
            }
        }
        state
    }

    fn counts(&self) -> Counts {
        Counts {
            members: self.members.len() as u64,
            connections: self.connections,
        }
    }

    fn view(&self, member: &MemberId) -> Option<Member> {
        let connections = self.members.get(member)?;
        Member::group(connections.values().cloned()).pop()
    }

    fn members(&self) -> Vec<Member> {
        Member::group(self.members.values().flat_map(|c| c.values().cloned()))
    }

    /// Stores the entry; whether anything changed.
    fn upsert(&mut self, entry: Entry) -> bool {
        let connections = self.members.entry(entry.key.member.clone()).or_default();
        match connections.insert(entry.key.connection.clone(), entry.clone()) {
            None => {
                self.connections += 1;
                true
            }
            Some(old) => old != entry,
        }
    }

    /// Removes the entry's connection; whether it was there.
    fn remove(&mut self, entry: &Entry) -> bool {
        let Some(connections) = self.members.get_mut(&entry.key.member) else {
            return false;
        };
        if connections.remove(&entry.key.connection).is_none() {
            return false;
        }
        self.connections -= 1;
        if connections.is_empty() {
            self.members.remove(&entry.key.member);
        }
        true
    }

    /// Applies one event and says member by member what changed.
    fn apply(&mut self, event: Event) -> Diff {
        let mut diff = Diff::default();
        match event {
            Event::Join { entry, .. } | Event::Update { entry } => {
                let member = entry.key.member.clone();
                if self.upsert(entry) {
                    diff.joins.extend(self.view(&member));
                }
            }
            Event::Leave { departure } => {
                let member = departure.entry.key.member.clone();
                let before = self.view(&member);
                if self.remove(&departure.entry) {
                    match self.view(&member) {
                        Some(now) => diff.joins.push(now),
                        None => diff.leaves.extend(before),
                    }
                }
            }
            _ => {}
        }
        diff.counts = self.counts();
        diff
    }

    /// Replaces the whole state and says member by member what changed.
    fn replace(&mut self, members: Vec<Member>) -> Diff {
        let new = State::from_members(members);
        let mut diff = Diff::default();
        for (member, connections) in &new.members {
            if self.members.get(member) != Some(connections) {
                diff.joins.extend(new.view(member));
            }
        }
        for member in self.members.keys() {
            if !new.members.contains_key(member) {
                diff.leaves.extend(self.view(member));
            }
        }
        *self = new;
        diff.counts = self.counts();
        diff
    }
}

impl LiveMembers {
    /// Subscribes to `topic`, reads its members and keeps them current in a
    /// background task (stopped when this is dropped).
    pub async fn start(store: Arc<dyn PresenceStore>, topic: Topic) -> Result<Self> {
        Self::open(store, topic, None).await
    }

    /// As [`start`](Self::start), and also re-reads the members every
    /// `every`: for stores whose events miss other processes' changes
    /// ([`PresenceStore::events_are_complete`] is false: SQLite files).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`](presence_core::Error::InvalidInput) naming
    /// `every` when it is zero; the store's errors.
    pub async fn start_refreshing(
        store: Arc<dyn PresenceStore>,
        topic: Topic,
        every: Duration,
    ) -> Result<Self> {
        let every = positive("every", every)?;
        Self::open(store, topic, Some(every)).await
    }

    /// [`start_refreshing`](Self::start_refreshing) every `every` when the
    /// store's events are not complete, [`start`](Self::start) otherwise.
    pub async fn follow(
        store: Arc<dyn PresenceStore>,
        topic: Topic,
        every: Duration,
    ) -> Result<Self> {
        if store.events_are_complete() {
            Self::start(store, topic).await
        } else {
            Self::start_refreshing(store, topic, every).await
        }
    }

    async fn open(
        store: Arc<dyn PresenceStore>,
        topic: Topic,
        refresh: Option<Duration>,
    ) -> Result<Self> {
        let events = store.subscribe(&topic).await?;
        let snapshot = store.members(&topic).await?;
        let shared = Arc::new(Shared {
            store,
            topic,
            state: RwLock::new(State::from_members(snapshot)),
            updates: broadcast::channel(UPDATE_BUFFER).0,
            resyncs: AtomicU64::new(0),
        });
        let (commands, received) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let task = tokio::spawn(follow(
            shared.clone(),
            events,
            received,
            refresh,
            stop.clone(),
        ));
        Ok(Self {
            shared,
            commands,
            stop,
            task: Mutex::new(Some(task)),
        })
    }

    /// The topic followed.
    pub fn topic(&self) -> &Topic {
        &self.shared.topic
    }

    /// The members now, in the store's order.
    pub fn members(&self) -> Vec<Member> {
        sync::read(&self.shared.state).members()
    }

    /// One member now.
    pub fn member(&self, member: &MemberId) -> Option<Member> {
        sync::read(&self.shared.state).view(member)
    }

    /// The counts now.
    pub fn counts(&self) -> Counts {
        sync::read(&self.shared.state).counts()
    }

    /// How many times the list was re-read after an [`Event::Resync`] or a
    /// call to [`resync`](Self::resync).
    pub fn resyncs(&self) -> u64 {
        self.shared.resyncs.load(Ordering::Relaxed)
    }

    /// Asks for the list to be re-read from the store now.
    pub fn resync(&self) {
        let _ = self.commands.send(Command::Resync);
    }

    /// Waits until every event already delivered to this process has been
    /// applied. On memory and SQLite stores, whose events are delivered as
    /// the write commits, reads made afterwards reflect every write that
    /// completed before the call. Does not re-read the store.
    pub async fn settled(&self) {
        let (done, wait) = oneshot::channel();
        if self.commands.send(Command::Settled(done)).is_ok() {
            let _ = wait.await;
        }
    }

    /// Stops following the topic: the background task ends (a re-read under
    /// way is abandoned), every [`updates`](Self::updates) stream ends, and
    /// the store subscription is released; returns once the task has ended.
    /// The list keeps its last state.
    pub async fn close(&self) {
        self.stop.cancel();
        let task = sync::lock(&self.task).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// The whole list, then every change as a [`Diff`]. A reader that falls
    /// more than 256 diffs behind gets the whole list again. The stream ends
    /// when this `LiveMembers` is closed or dropped.
    pub fn updates(&self) -> LiveUpdates {
        let (first, receiver) = {
            let state = sync::read(&self.shared.state);
            let first = LiveUpdate::State {
                members: state.members(),
                counts: state.counts(),
            };
            (first, self.shared.updates.subscribe())
        };
        // Weak, so the stream ends once the `LiveMembers` is dropped.
        let shared = Arc::downgrade(&self.shared);
        let rest = BroadcastStream::new(receiver).filter_map(move |item| {
            let update = match item {
                Ok(diff) => Some(LiveUpdate::Diff(diff)),
                Err(BroadcastStreamRecvError::Lagged(_)) => shared.upgrade().map(|shared| {
                    let state = sync::read(&shared.state);
                    LiveUpdate::State {
                        members: state.members(),
                        counts: state.counts(),
                    }
                }),
            };
            std::future::ready(update)
        });
        futures::stream::once(async move { first })
            .chain(rest)
            .take_until(self.stop.clone().cancelled_owned())
            .boxed()
    }
}

impl Drop for LiveMembers {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(task) = sync::lock(&self.task).take() {
            task.abort();
        }
    }
}

impl std::fmt::Debug for LiveMembers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveMembers")
            .field("topic", &self.shared.topic)
            .field("counts", &self.counts())
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn publish(&self, diff: Diff) {
        if !diff.is_empty() {
            // No reader is not an error.
            let _ = self.updates.send(diff);
        }
    }

    fn apply(&self, event: Event) {
        let mut state = sync::write(&self.state);
        let diff = state.apply(event);
        self.publish(diff);
    }

    /// Re-reads the members, retrying with backoff until the store answers.
    ///
    /// Events already delivered are dropped first: each was sent once its
    /// write committed, so the snapshot read after them holds it. Applied
    /// after the snapshot instead, they would replay old changes, and the
    /// list would show, for a moment, members who had already left.
    async fn refresh(&self, events: &mut EventStream) {
        while let Some(Some(_)) = events.next().now_or_never() {}
        let mut backoff = Duration::from_millis(50);
        let members = loop {
            match self.store.members(&self.topic).await {
                Ok(members) => break members,
                Err(presence_core::Error::Closed { .. }) => return,
                Err(error) => {
                    tracing::warn!(topic = %self.topic, error = %error.chain(), "re-reading members failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
        let mut state = sync::write(&self.state);
        let diff = state.replace(members);
        self.publish(diff);
    }
}

/// The background task: applies events, re-reads on `Resync`, on request
/// and on the refresh interval, until stopped (which interrupts a re-read)
/// or the store's stream ends, which ends the updates too.
async fn follow(
    shared: Arc<Shared>,
    events: EventStream,
    commands: mpsc::UnboundedReceiver<Command>,
    refresh: Option<Duration>,
    stop: CancellationToken,
) {
    tokio::select! {
        () = stop.cancelled() => {}
        () = apply_until_done(shared, events, commands, refresh) => {}
    }
    // The store's stream ended (it was closed): so do the updates.
    stop.cancel();
}

async fn apply_until_done(
    shared: Arc<Shared>,
    mut events: EventStream,
    mut commands: mpsc::UnboundedReceiver<Command>,
    refresh: Option<Duration>,
) {
    let mut tick = refresh.map(|every| {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval
    });
    loop {
        tokio::select! {
            // Events first: a `Settled` request is answered only once no
            // delivered event is left.
            biased;
            event = events.next() => match event {
                Some(Event::Resync) => {
                    shared.resyncs.fetch_add(1, Ordering::Relaxed);
                    shared.refresh(&mut events).await;
                }
                Some(event) => shared.apply(event),
                None => return,
            },
            Some(command) = commands.recv() => match command {
                Command::Resync => {
                    shared.resyncs.fetch_add(1, Ordering::Relaxed);
                    shared.refresh(&mut events).await;
                }
                Command::Settled(done) => {
                    let _ = done.send(());
                }
            },
            _ = async { tick.as_mut().unwrap().tick().await }, if tick.is_some() => {
                shared.refresh(&mut events).await;
            }
        }
    }
}

#[cfg(all(test, feature = "memory"))]
mod tests {
    use super::*;
    use presence_core::{Meta, PresenceKey};
    use presence_memory::{MemoryConfig, MemoryStore};

    fn key(member: &str) -> PresenceKey {
        PresenceKey::new("room", member, "c").unwrap()
    }

    /// A re-read after lost events does not replay the events still
    /// buffered, which the snapshot already holds: a member who came and
    /// went while the list lagged never shows up in its updates.
    #[tokio::test(flavor = "current_thread")]
    async fn a_resync_does_not_replay_what_it_read() {
        let store = Arc::new(MemoryStore::with_config(MemoryConfig {
            event_buffer: 2,
            ..MemoryConfig::default()
        }));
        let live = LiveMembers::start(store.clone(), "room".try_into().unwrap())
            .await
            .unwrap();
        let mut updates = live.updates();
        // On one thread the list's task cannot run before `settled`: the
        // first two events are lost, the last two stay buffered.
        for member in ["x1", "x2", "gone"] {
            store.join(&key(member), Meta::new()).await.unwrap();
        }
        store.leave(&key("gone")).await.unwrap();
        live.settled().await;

        let mut seen = Vec::new();
        while let Some(Some(update)) = updates.next().now_or_never() {
            seen.push(update);
        }
        assert!(live.resyncs() > 0, "the events were meant to overflow");
        let mentioned = |update: &LiveUpdate, who: &str| match update {
            LiveUpdate::State { members, .. } => members.iter().any(|m| m.member.as_str() == who),
            LiveUpdate::Diff(diff) => diff
                .joins
                .iter()
                .chain(&diff.leaves)
                .any(|m| m.member.as_str() == who),
        };
        assert!(
            !seen.iter().any(|update| mentioned(update, "gone")),
            "a member who had left was replayed: {seen:?}"
        );
        assert!(seen.iter().any(|update| mentioned(update, "x1")));
        let members: Vec<String> = live
            .members()
            .iter()
            .map(|m| m.member.to_string())
            .collect();
        assert_eq!(members, ["x1", "x2"]);
    }
}
