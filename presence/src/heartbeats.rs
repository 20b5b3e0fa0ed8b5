//! `Heartbeats`: many connections' touches, flushed as one `touch_many`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::sync;
use presence_core::{MAX_BATCH_KEYS, PresenceKey, PresenceStore, Result};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::sweeper::positive;

/// Called with the keys a flush found absent (swept or left), so their
/// clients can join again.
pub type AbsentHandler = Arc<dyn Fn(Vec<PresenceKey>) + Send + Sync>;

/// Collects heartbeats from many connections and flushes them on an
/// interval with [`touch_many`](PresenceStore::touch_many): 50,000 sockets
/// heartbeating cost one statement per 10,000 keys per interval, not 50,000
/// round trips. A key touched several times between flushes is touched once.
///
/// On shutdown, [`close`](Heartbeats::close) stops the flush task and sends
/// what is pending. Dropping a `Heartbeats` stops the task without sending.
///
/// ```
/// # use std::{sync::Arc, time::Duration};
/// # use presence::{Heartbeats, Meta, PresenceKey, PresenceStore, memory::MemoryStore};
/// # async fn run() -> presence::Result<()> {
/// let store: Arc<dyn PresenceStore> = Arc::new(MemoryStore::new());
/// let key = PresenceKey::new("/chat/1", "alice", "socket-9")?;
/// store.join(&key, Meta::new()).await?;
///
/// let heartbeats = Heartbeats::new(store, Duration::from_secs(1))?;
/// heartbeats.touch(key); // from the socket's handler: no I/O here
/// let absent = heartbeats.flush().await?; // or wait for the interval
/// assert!(absent.is_empty());
/// heartbeats.close().await?; // on shutdown
/// # Ok(()) }
/// ```
pub struct Heartbeats {
    shared: Arc<Shared>,
    stop: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    store: Arc<dyn PresenceStore>,
    pending: Mutex<HashSet<PresenceKey>>,
    on_absent: Option<AbsentHandler>,
}

impl Heartbeats {
    /// Flushes every `every`; absent keys are only logged.
    ///
    /// Must be called within a tokio runtime.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`](presence_core::Error::InvalidInput) naming
    /// `every` when it is zero.
    pub fn new(store: Arc<dyn PresenceStore>, every: Duration) -> Result<Self> {
        Self::start(store, every, None)
    }

    /// Flushes every `every` and hands each flush's absent keys to
    /// `on_absent` (tell those clients to join again).
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new).
    pub fn with_absent_handler(
        store: Arc<dyn PresenceStore>,
        every: Duration,
        on_absent: impl Fn(Vec<PresenceKey>) + Send + Sync + 'static,
    ) -> Result<Self> {
        Self::start(store, every, Some(Arc::new(on_absent)))
    }

    fn start(
        store: Arc<dyn PresenceStore>,
        every: Duration,
        on_absent: Option<AbsentHandler>,
    ) -> Result<Self> {
        let every = positive("every", every)?;
        let shared = Arc::new(Shared {
            store,
            pending: Mutex::new(HashSet::new()),
            on_absent,
        });
        let stop = CancellationToken::new();
        let task = tokio::spawn(flush_every(shared.clone(), every, stop.clone()));
        Ok(Self {
            shared,
            stop,
            task: Mutex::new(Some(task)),
        })
    }

    /// Records a heartbeat of `key`, to be sent with the next flush. Cheap
    /// and synchronous: call it from every socket's ping.
    pub fn touch(&self, key: PresenceKey) {
        sync::lock(&self.shared.pending).insert(key);
    }

    /// Drops a pending heartbeat of `key` (its connection closed), so the
    /// next flush does not report it absent.
    pub fn forget(&self, key: &PresenceKey) {
        sync::lock(&self.shared.pending).remove(key);
    }

    /// How many distinct keys wait for the next flush.
    pub fn pending(&self) -> usize {
        sync::lock(&self.shared.pending).len()
    }

    /// Sends every pending heartbeat now, in one `touch_many` per 10,000
    /// keys (sent side by side), and returns the keys that were absent
    /// (also handed to the absent handler). Keys of a batch that failed stay
    /// pending for the next flush, and the flush returns the error.
    pub async fn flush(&self) -> Result<Vec<PresenceKey>> {
        self.shared.flush().await
    }

    /// Stops the flush task (a flush under way finishes), then sends what
    /// is pending in one last [`flush`](Self::flush) and returns its
    /// result. Heartbeats recorded afterwards wait for an explicit `flush`.
    pub async fn close(&self) -> Result<Vec<PresenceKey>> {
        self.stop.cancel();
        let task = sync::lock(&self.task).take();
        if let Some(task) = task {
            let _ = task.await;
        }
        self.shared.flush().await
    }
}

impl Drop for Heartbeats {
    fn drop(&mut self) {
        if let Some(task) = sync::lock(&self.task).take() {
            task.abort();
        }
    }
}

impl std::fmt::Debug for Heartbeats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Heartbeats")
            .field("store", &self.shared.store)
            .field("pending", &self.pending())
            .finish_non_exhaustive()
    }
}

impl Shared {
    async fn flush(&self) -> Result<Vec<PresenceKey>> {
        let keys: Vec<PresenceKey> = std::mem::take(&mut *sync::lock(&self.pending))
            .into_iter()
            .collect();
        // Batches of the contract's largest size, sent side by side (a
        // pooled store runs them on several connections at once).
        let batches: Vec<&[PresenceKey]> = keys.chunks(MAX_BATCH_KEYS).collect();
        let results =
            futures::future::join_all(batches.iter().map(|batch| self.store.touch_many(batch)))
                .await;
        let mut absent = Vec::new();
        let mut failure = None;
        for (batch, result) in batches.iter().zip(results) {
            match result {
                Ok(missing) => absent.extend(missing),
                Err(error) => {
                    // Keep what failed for the next flush; a newer touch of
                    // a key is the same heartbeat, so merging loses nothing.
                    sync::lock(&self.pending).extend(batch.iter().cloned());
                    failure.get_or_insert(error);
                }
            }
        }
        if let Some(on_absent) = &self.on_absent
            && !absent.is_empty()
        {
            on_absent(absent.clone());
        }
        match failure {
            Some(error) => Err(error),
            None => Ok(absent),
        }
    }
}

async fn flush_every(shared: Arc<Shared>, every: Duration, stop: CancellationToken) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        match shared.flush().await {
            Ok(absent) if !absent.is_empty() && shared.on_absent.is_none() => {
                tracing::debug!(absent = absent.len(), "heartbeats for absent entries");
            }
            Ok(_) => {}
            Err(presence_core::Error::Closed { .. }) => {
                tracing::debug!("the store was closed; heartbeat flushing stops");
                return;
            }
            Err(error) => tracing::warn!(
                error = %error.chain(),
                "heartbeat flush failed; the keys stay pending for the next interval"
            ),
        }
    }
}
