//! One shared feed per channel in the process: it follows
//! [`Channels::subscribe`], merges the changes of each coalescing window
//! into one diff, numbers the diffs, serializes each once for every viewer
//! and keeps the recent ones so a reconnect can continue.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use presence::{ChannelMember, ChannelUpdate, ChannelUpdates, Channels, Counts, MemberId, Topic};
use tokio::sync::{OnceCell, broadcast};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::sync::lock;
use crate::wire::{WebDiff, WebMember, WebState, to_json};

/// Frames kept for a viewer that is slow to read before it gets the whole
/// state instead (the frames themselves are shared by every viewer).
const VIEWER_BUFFER: usize = 64;

/// One event as every viewer receives it, ready to send: `id:`, `event:`
/// and `data:` lines. A stream of this one channel sends it whole; a
/// stream of several sends its own `id:` line and the rest
/// ([`Frame::body`]), shared without copying.
#[derive(Clone)]
pub(crate) struct Frame {
    pub(crate) seq: u64,
    pub(crate) bytes: Bytes,
    body_at: usize,
}

impl Frame {
    /// The event without its `id:` line.
    pub(crate) fn body(&self) -> Bytes {
        self.bytes.slice(self.body_at..)
    }
}

/// What the hubs need from the router's settings.
#[derive(Clone)]
pub(crate) struct HubSettings {
    pub(crate) coalesce: Duration,
    pub(crate) history: usize,
    pub(crate) linger: Duration,
    pub(crate) shutdown: CancellationToken,
}

type Slots = Arc<Mutex<HashMap<Topic, Arc<OnceCell<Arc<Hub>>>>>>;

/// The open hubs, by topic.
pub(crate) struct Hubs {
    settings: HubSettings,
    slots: Slots,
}

impl Hubs {
    pub(crate) fn new(settings: HubSettings) -> Self {
        Self {
            settings,
            slots: Arc::default(),
        }
    }

    /// The topic's hub, if one is open.
    pub(crate) fn get(&self, topic: &Topic) -> Option<Arc<Hub>> {
        let slots = lock(&self.slots);
        slots
            .get(topic)?
            .get()
            .filter(|hub| !hub.is_closed())
            .cloned()
    }

    /// How many hubs are open (for tests and the bench).
    pub(crate) fn open_count(&self) -> usize {
        lock(&self.slots).len()
    }

    /// A viewer of `topic`: opens its hub through `channels.subscribe(as_viewer)`
    /// if none is open (the caller checked the viewer may see it).
    pub(crate) async fn attach(
        &self,
        channels: &Channels,
        as_viewer: &MemberId,
        topic: &Topic,
        count_only: bool,
    ) -> presence::Result<ViewerGuard> {
        loop {
            let slot = lock(&self.slots).entry(topic.clone()).or_default().clone();
            let hub = slot
                .get_or_try_init(|| self.open(channels, as_viewer, topic, count_only))
                .await?
                .clone();
            let attached = {
                let slots = lock(&self.slots);
                // Counted under the lock a retiring hub checks its viewers
                // under: a hub is never retired with a viewer on its way in.
                let current = slots.get(topic).is_some_and(|s| Arc::ptr_eq(s, &slot));
                if current && !hub.is_closed() {
                    hub.viewers.fetch_add(1, Ordering::SeqCst);
                    true
                } else {
                    false
                }
            };
            if attached {
                return Ok(ViewerGuard { hub });
            }
            // It closed meanwhile (shutdown, store closed, retired): retry,
            // which opens a new one unless shutting down.
            if self.settings.shutdown.is_cancelled() {
                return Err(presence::Error::Closed {
                    backend: "presence-axum",
                });
            }
            tokio::task::yield_now().await;
        }
    }

    async fn open(
        &self,
        channels: &Channels,
        as_viewer: &MemberId,
        topic: &Topic,
        count_only: bool,
    ) -> presence::Result<Arc<Hub>> {
        let mut feed = channels.subscribe(as_viewer, topic).await?;
        let mut state = HubState::default();
        match feed.next().await {
            Some(first) => state.apply(first, &mut HashSet::new()),
            None => {
                return Err(presence::Error::Closed {
                    backend: "presence-axum",
                });
            }
        }
        state.sent_counts = state.counts;
        let hub = Arc::new(Hub {
            topic: topic.clone(),
            epoch: epoch(),
            count_only,
            history: self.settings.history,
            viewers: AtomicUsize::new(0),
            state: Mutex::new(Locked {
                state,
                seq: 0,
                history: VecDeque::new(),
                cached_state: None,
                sender: Some(broadcast::channel(VIEWER_BUFFER).0),
                idle_since: Instant::now(),
            }),
        });
        tokio::spawn(follow(
            hub.clone(),
            feed,
            self.settings.clone(),
            self.slots.clone(),
        ));
        Ok(hub)
    }
}

/// A random tag for a hub's ids: a reconnect to another hub (after a
/// restart, or once the old one retired) never mistakes its numbers.
fn epoch() -> String {
    let mut n = fastrand::u64(1..u64::MAX);
    let mut text = String::new();
    while n > 0 && text.len() < 8 {
        let digit = (n % 36) as u8;
        text.push(char::from(if digit < 10 {
            b'0' + digit
        } else {
            b'a' + digit - 10
        }));
        n /= 36;
    }
    text
}

/// One channel's shared feed.
pub(crate) struct Hub {
    topic: Topic,
    epoch: String,
    count_only: bool,
    /// Diffs kept for reconnects.
    history: usize,
    /// Raised under the hubs' lock only, so a hub is retired with none.
    viewers: AtomicUsize,
    state: Mutex<Locked>,
}

/// The members as the last update left them: by id, with the counts.
#[derive(Default)]
struct HubState {
    members: HashMap<MemberId, ChannelMember>,
    counts: Counts,
    /// The counts the last diff carried.
    sent_counts: Counts,
    /// Changes with every update applied.
    version: u64,
}

struct Locked {
    state: HubState,
    /// The number of the last diff sent.
    seq: u64,
    history: VecDeque<Arc<Frame>>,
    /// The `event: state` frame at (version, frame.seq).
    cached_state: Option<(u64, Frame)>,
    /// `None` once closed: viewers' receivers then end.
    sender: Option<broadcast::Sender<Arc<Frame>>>,
    idle_since: Instant,
}

/// Whether two views of a member show the same presence: heartbeats move
/// `last_seen_at` without events, so a re-read differs there only.
fn same_presence(a: &ChannelMember, b: &ChannelMember) -> bool {
    a.profile == b.profile
        && presence::Member::same_presence(
            std::slice::from_ref(&a.member),
            std::slice::from_ref(&b.member),
        )
}

impl HubState {
    /// Applies an update, noting the members it touched.
    fn apply(&mut self, update: ChannelUpdate, touched: &mut HashSet<MemberId>) {
        match update {
            ChannelUpdate::State { counts, members } => {
                let new: HashMap<MemberId, ChannelMember> = members
                    .into_iter()
                    .map(|m| (m.member.member.clone(), m))
                    .collect();
                for (id, member) in &new {
                    if self
                        .members
                        .get(id)
                        .is_none_or(|old| !same_presence(old, member))
                    {
                        touched.insert(id.clone());
                    }
                }
                for id in self.members.keys() {
                    if !new.contains_key(id) {
                        touched.insert(id.clone());
                    }
                }
                self.members = new;
                self.counts = counts;
            }
            ChannelUpdate::Diff {
                counts,
                joins,
                leaves,
            } => {
                for id in leaves {
                    self.members.remove(&id);
                    touched.insert(id);
                }
                for member in joins {
                    touched.insert(member.member.member.clone());
                    self.members.insert(member.member.member.clone(), member);
                }
                self.counts = counts;
            }
        }
        self.version += 1;
    }

    fn sorted(&self) -> Vec<&ChannelMember> {
        let mut members: Vec<&ChannelMember> = self.members.values().collect();
        members.sort_by(|a, b| {
            (a.member.joined_at, &a.member.member).cmp(&(b.member.joined_at, &b.member.member))
        });
        members
    }
}

fn frame(seq: u64, id: &str, event: &str, data: &[u8]) -> Frame {
    let mut bytes = BytesMut::with_capacity(id.len() + event.len() + data.len() + 24);
    bytes.put_slice(b"id: ");
    bytes.put_slice(id.as_bytes());
    bytes.put_slice(b"\n");
    let body_at = bytes.len();
    bytes.put_slice(b"event: ");
    bytes.put_slice(event.as_bytes());
    bytes.put_slice(b"\ndata: ");
    // JSON text never holds a raw newline, so it is one `data:` line.
    bytes.put_slice(data);
    bytes.put_slice(b"\n\n");
    Frame {
        seq,
        bytes: bytes.freeze(),
        body_at,
    }
}

impl Hub {
    fn is_closed(&self) -> bool {
        lock(&self.state).sender.is_none()
    }

    /// The epoch of its ids.
    pub(crate) fn epoch(&self) -> &str {
        &self.epoch
    }

    fn id(&self, seq: u64) -> String {
        format!("{}.{seq}", self.epoch)
    }

    /// The `/state` answer for this channel: the state now and the id of
    /// the last diff it includes.
    pub(crate) fn web_state(&self) -> Vec<u8> {
        let locked = lock(&self.state);
        let id = self.id(locked.seq);
        let members = locked.state.sorted();
        to_json(&WebState {
            channel: None,
            id: None,
            count_only: self.count_only,
            counts: locked.state.counts,
            members: (!self.count_only).then(|| members.into_iter().map(WebMember::of).collect()),
            last_id: Some(Some(&id)),
        })
    }

    /// The `event: state` frame now and its number (cached until the next
    /// change, so viewers arriving together share one serialization).
    fn state_frame(locked: &mut Locked, hub: &Hub) -> Frame {
        let (version, seq) = (locked.state.version, locked.seq);
        if let Some((v, frame)) = &locked.cached_state
            && (*v, frame.seq) == (version, seq)
        {
            return frame.clone();
        }
        let id = hub.id(seq);
        let members = locked.state.sorted();
        let data = to_json(&WebState {
            channel: Some(hub.topic.as_str()),
            id: Some(&id),
            count_only: hub.count_only,
            counts: locked.state.counts,
            members: (!hub.count_only).then(|| members.into_iter().map(WebMember::of).collect()),
            last_id: None,
        });
        let frame = frame(seq, &id, "state", &data);
        locked.cached_state = Some((version, frame.clone()));
        frame
    }

    /// Sends one diff of the members in `touched` (all of them, present or
    /// not: a state read between two diffs may already hold a change, and
    /// re-applying it is harmless, missing it is not).
    fn flush(&self, touched: &mut HashSet<MemberId>) {
        let mut locked = lock(&self.state);
        if touched.is_empty() && locked.state.counts == locked.state.sent_counts {
            return;
        }
        let seq = locked.seq + 1;
        let id = self.id(seq);
        let data = {
            let state = &locked.state;
            let mut joins: Vec<&ChannelMember> = touched
                .iter()
                .filter_map(|id| state.members.get(id))
                .collect();
            joins.sort_by(|a, b| {
                (a.member.joined_at, &a.member.member).cmp(&(b.member.joined_at, &b.member.member))
            });
            let mut leaves: Vec<&str> = touched
                .iter()
                .filter(|id| !state.members.contains_key(*id))
                .map(|id| id.as_str())
                .collect();
            leaves.sort_unstable();
            to_json(&WebDiff {
                channel: self.topic.as_str(),
                id: &id,
                counts: state.counts,
                joins: (!self.count_only).then(|| joins.into_iter().map(WebMember::of).collect()),
                leaves: (!self.count_only).then_some(leaves),
            })
        };
        touched.clear();
        let frame = Arc::new(frame(seq, &id, "diff", &data));
        locked.seq = seq;
        locked.state.sent_counts = locked.state.counts;
        locked.history.push_back(frame.clone());
        while locked.history.len() > self.history {
            locked.history.pop_front();
        }
        if let Some(sender) = &locked.sender {
            // No receiver is fine: nobody is watching right now.
            let _ = sender.send(frame);
        }
    }

    /// A viewer's start: the whole state, or (when `after` names a diff of
    /// this hub still in its history) the diffs after it; then live diffs.
    pub(crate) fn tap(self: &Arc<Self>, guard: ViewerGuard, after: Option<u64>) -> Option<Tap> {
        let mut locked = lock(&self.state);
        let receiver = locked.sender.as_ref()?.subscribe();
        let seq = locked.seq;
        let mut first = VecDeque::new();
        let continued = after.is_some_and(|after| {
            after == seq
                || (after < seq
                    && locked
                        .history
                        .front()
                        .is_some_and(|oldest| oldest.seq <= after + 1))
        });
        if continued {
            let after = after.unwrap_or(seq);
            first.extend(
                locked
                    .history
                    .iter()
                    .filter(|frame| frame.seq > after)
                    .map(|frame| Frame::clone(frame)),
            );
        } else {
            first.push_back(Self::state_frame(&mut locked, self));
        }
        Some(Tap {
            hub: self.clone(),
            _guard: guard,
            first,
            receiver,
            last: seq,
        })
    }

    fn close(&self) {
        let mut locked = lock(&self.state);
        locked.sender = None;
    }
}

/// A viewer holds its hub open.
pub(crate) struct ViewerGuard {
    hub: Arc<Hub>,
}

impl ViewerGuard {
    pub(crate) fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// This viewer's frames; see [`Hub::tap`]. `None` if the hub closed.
    pub(crate) fn tap(self, after: Option<u64>) -> Option<Tap> {
        let hub = self.hub.clone();
        hub.tap(self, after)
    }
}

impl Drop for ViewerGuard {
    fn drop(&mut self) {
        if self.hub.viewers.fetch_sub(1, Ordering::SeqCst) == 1 {
            lock(&self.hub.state).idle_since = Instant::now();
        }
    }
}

/// One viewer's frames of one channel: its start, then live diffs; after
/// falling behind, the whole state again.
pub(crate) struct Tap {
    hub: Arc<Hub>,
    _guard: ViewerGuard,
    first: VecDeque<Frame>,
    receiver: broadcast::Receiver<Arc<Frame>>,
    last: u64,
}

impl Tap {
    /// The epoch of its hub's ids.
    pub(crate) fn hub_epoch(&self) -> &str {
        &self.hub.epoch
    }

    /// The next frame; `None` when the hub closed.
    pub(crate) async fn next(&mut self) -> Option<Frame> {
        if let Some(first) = self.first.pop_front() {
            return Some(first);
        }
        loop {
            match self.receiver.recv().await {
                Ok(frame) if frame.seq <= self.last => continue,
                Ok(frame) if frame.seq == self.last + 1 => {
                    self.last = frame.seq;
                    return Some(Frame::clone(&frame));
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    let frame = {
                        let mut locked = lock(&self.hub.state);
                        Hub::state_frame(&mut locked, &self.hub)
                    };
                    self.last = frame.seq;
                    return Some(frame);
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// The hub's task: applies the channel's updates, sends a diff at once
/// after a quiet spell and at most one per coalescing window while busy,
/// retires the hub once it had no viewer for `linger`.
async fn follow(hub: Arc<Hub>, mut feed: ChannelUpdates, settings: HubSettings, slots: Slots) {
    let mut touched = HashSet::new();
    let mut dirty = false;
    let mut last_flush: Option<Instant> = None;
    let idle_every = (settings.linger / 2).clamp(Duration::from_millis(50), Duration::from_secs(5));
    let mut idle = tokio::time::interval_at(Instant::now() + idle_every, idle_every);
    loop {
        let due = dirty.then(|| last_flush.map_or_else(Instant::now, |at| at + settings.coalesce));
        tokio::select! {
            biased;
            () = settings.shutdown.cancelled() => break,
            update = feed.next() => {
                let Some(update) = update else { break };
                lock(&hub.state).state.apply(update, &mut touched);
                dirty = true;
                let quiet = last_flush.is_none_or(|at| at.elapsed() >= settings.coalesce);
                if quiet {
                    hub.flush(&mut touched);
                    dirty = false;
                    last_flush = Some(Instant::now());
                }
            }
            () = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                hub.flush(&mut touched);
                dirty = false;
                last_flush = Some(Instant::now());
            }
            _ = idle.tick() => {
                let mut slots = lock(&slots);
                let idle_for = lock(&hub.state).idle_since.elapsed();
                if hub.viewers.load(Ordering::SeqCst) == 0 && idle_for >= settings.linger {
                    forget(&mut slots, &hub);
                    hub.close();
                    return;
                }
            }
        }
    }
    if dirty {
        hub.flush(&mut touched);
    }
    forget(&mut lock(&slots), &hub);
    hub.close();
}

fn forget(slots: &mut HashMap<Topic, Arc<OnceCell<Arc<Hub>>>>, hub: &Arc<Hub>) {
    if slots
        .get(&hub.topic)
        .and_then(|slot| slot.get())
        .is_some_and(|theirs| Arc::ptr_eq(theirs, hub))
    {
        slots.remove(&hub.topic);
    }
}
