//! `Sweeper`: removes expired entries on an interval.

use std::sync::Arc;
use std::time::Duration;

use presence_core::{Departure, PresenceStore, PresenceStoreExt, Result};
use tokio::task::JoinHandle;

/// Called with the departures of each sweep that removed something.
pub type DepartureHandler = Arc<dyn Fn(Vec<Departure>) + Send + Sync>;

/// Calls [`sweep_all`](PresenceStore::sweep_all) with `now - ttl` on an
/// interval and hands the departures to a callback. Several app servers may
/// each run one on a shared store: the store reports every expired entry
/// once in total.
///
/// ```
/// # use std::{sync::Arc, time::Duration};
/// # use presence::{PresenceStore, Sweeper, memory::MemoryStore};
/// # async fn run() {
/// let store: Arc<dyn PresenceStore> = Arc::new(MemoryStore::new());
/// let sweeper = Sweeper::new(store, Duration::from_secs(60))
///     .every(Duration::from_secs(5))
///     .on_departures(|gone| {
///         for departure in gone {
///             println!("{} timed out", departure.entry.key);
///         }
///     })
///     .spawn(); // runs until the handle is dropped
/// # drop(sweeper);
/// # }
/// ```
#[derive(Clone)]
pub struct Sweeper {
    store: Arc<dyn PresenceStore>,
    ttl: Duration,
    every: Duration,
    on_departures: Option<DepartureHandler>,
}

impl Sweeper {
    /// A sweeper removing entries not seen for `ttl`, every quarter of `ttl`
    /// (so an entry lingers at most 1.25 TTL).
    pub fn new(store: Arc<dyn PresenceStore>, ttl: Duration) -> Self {
        Self {
            store,
            ttl,
            every: ttl / 4,
            on_departures: None,
        }
    }

    /// Sweeps every `every` instead.
    pub fn every(mut self, every: Duration) -> Self {
        self.every = every;
        self
    }

    /// Hands each sweep's departures (when there are any) to `handler`.
    pub fn on_departures(
        mut self,
        handler: impl Fn(Vec<Departure>) + Send + Sync + 'static,
    ) -> Self {
        self.on_departures = Some(Arc::new(handler));
        self
    }

    /// The TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Sweeps once now: removes every entry last seen before the store
    /// clock's `now - ttl`, hands the departures to the handler and returns
    /// them.
    pub async fn sweep_once(&self) -> Result<Vec<Departure>> {
        let departures = self.store.sweep_expired(self.ttl).await?;
        if let Some(handler) = &self.on_departures
            && !departures.is_empty()
        {
            handler(departures.clone());
        }
        Ok(departures)
    }

    /// Sweeps on the interval in a background task until the handle is
    /// dropped. A failed sweep is logged and tried again next interval.
    ///
    /// Must be called within a tokio runtime.
    pub fn spawn(self) -> SweeperHandle {
        SweeperHandle(tokio::spawn(async move {
            let mut interval = tokio::time::interval(self.every);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                if let Err(error) = self.sweep_once().await {
                    tracing::warn!(%error, "presence sweep failed; retrying next interval");
                }
            }
        }))
    }
}

impl std::fmt::Debug for Sweeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sweeper")
            .field("store", &self.store)
            .field("ttl", &self.ttl)
            .field("every", &self.every)
            .finish_non_exhaustive()
    }
}

/// A running [`Sweeper`]; dropping it stops the sweeps.
#[derive(Debug)]
pub struct SweeperHandle(JoinHandle<()>);

impl Drop for SweeperHandle {
    fn drop(&mut self) {
        self.0.abort();
    }
}
