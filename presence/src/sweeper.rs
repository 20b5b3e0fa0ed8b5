//! `Sweeper`: removes expired entries on an interval.

use std::sync::Arc;
use std::time::Duration;

use presence_core::{Departure, Error, PresenceStore, PresenceStoreExt, Result};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Refuses a zero duration for the setting `field`.
pub(crate) fn positive(field: &'static str, value: Duration) -> Result<Duration> {
    if value.is_zero() {
        return Err(Error::invalid(field, "must be longer than 0"));
    }
    Ok(value)
}

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
/// # async fn run() -> presence::Result<()> {
/// let store: Arc<dyn PresenceStore> = Arc::new(MemoryStore::new());
/// let sweeper = Sweeper::new(store, Duration::from_secs(60))?
///     .every(Duration::from_secs(5))?
///     .on_departures(|gone| {
///         for departure in gone {
///             println!("{} timed out", departure.entry.key);
///         }
///     })
///     .spawn(); // runs until the handle is closed or dropped
/// sweeper.close().await; // on shutdown: lets a running sweep finish
/// # Ok::<(), presence::Error>(())
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
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] naming `ttl` when it is zero.
    pub fn new(store: Arc<dyn PresenceStore>, ttl: Duration) -> Result<Self> {
        let ttl = positive("ttl", ttl)?;
        Ok(Self {
            store,
            ttl,
            every: (ttl / 4).max(Duration::from_millis(1)),
            on_departures: None,
        })
    }

    /// Sweeps every `every` instead.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] naming `every` when it is zero.
    pub fn every(mut self, every: Duration) -> Result<Self> {
        self.every = positive("every", every)?;
        Ok(self)
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
    /// closed or dropped. A failed sweep is logged as a warning, with its
    /// cause, every time, and tried again next interval.
    ///
    /// Must be called within a tokio runtime.
    pub fn spawn(self) -> SweeperHandle {
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut interval = tokio::time::interval(self.every);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing = 0u64;
            loop {
                tokio::select! {
                    () = stopped.cancelled() => return,
                    _ = interval.tick() => {}
                }
                // A sweep that started runs to its end: a store's sweep is
                // atomic per topic, and its departures must reach the handler.
                match self.sweep_once().await {
                    Ok(_) if failing > 0 => {
                        tracing::warn!(failed_before = failing, "presence sweeps succeed again");
                        failing = 0;
                    }
                    Ok(_) => {}
                    Err(Error::Closed { .. }) => {
                        tracing::debug!("the store was closed; the sweeper stops");
                        return;
                    }
                    Err(error) => {
                        failing += 1;
                        tracing::warn!(
                            error = %error.chain(),
                            failing,
                            "presence sweep failed; retrying next interval"
                        );
                    }
                }
            }
        });
        SweeperHandle {
            stop,
            task: Some(task),
        }
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

/// A running [`Sweeper`]; [`close`](SweeperHandle::close) it on shutdown.
/// Dropping it stops the sweeps too, without waiting.
#[derive(Debug)]
pub struct SweeperHandle {
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl SweeperHandle {
    /// Stops sweeping: a sweep under way finishes (and its departures reach
    /// the handler), then the task ends; returns once it has.
    pub async fn close(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for SweeperHandle {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}
