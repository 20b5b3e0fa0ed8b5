//! The one suite every `presence` backend must pass.
//!
//! Each property of the contract (`docs/contract.md`) is a `pub async fn`
//! taking a [`Backend`], the thing that opens fresh stores. [`suite!`] stamps
//! out one named `#[test]` per property for a backend, so a failure names the
//! broken property:
//!
//! ```
//! use std::sync::Arc;
//!
//! use conformance::{Backend, Setup};
//! use presence_core::PresenceStore;
//! use presence_memory::{MemoryConfig, MemoryStore};
//!
//! struct Memory;
//!
//! #[async_trait::async_trait]
//! impl Backend for Memory {
//!     async fn open(&self, setup: &Setup) -> Arc<dyn PresenceStore> {
//!         Arc::new(MemoryStore::with_config(MemoryConfig {
//!             max_meta_bytes: setup.max_meta_bytes,
//!             event_buffer: setup.event_buffer,
//!             clock: Arc::new(setup.clock.clone()),
//!             ..MemoryConfig::default()
//!         }))
//!     }
//! }
//!
//! // In a test file this is all it takes; here, run one property by hand.
//! conformance::suite!(Memory);
//! conformance::run(conformance::join_is_idempotent(&Memory));
//! ```
//!
//! The suite holds three kinds of checks: example-based properties
//! ([`basics`], [`input`], [`events`]), a proptest state machine comparing
//! random call sequences with a plain reference model ([`machine`]), and
//! races on a multi-threaded runtime ([`concurrency`]).

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use presence_core::{DEFAULT_MAX_META_BYTES, ManualClock, PresenceStore, Timestamp};

pub mod basics;
pub mod concurrency;
pub mod events;
pub mod input;
pub mod lifecycle;
pub mod logs;
pub mod machine;
mod model;
pub mod processes;
pub mod support;

pub use basics::*;
pub use concurrency::*;
pub use events::*;
pub use input::*;
pub use lifecycle::*;
pub use machine::*;

/// Re-exported for [`footprint_suite!`]'s counting allocator.
#[doc(hidden)]
pub use cap;

/// What a property asks of the store it opens. Capability differences between
/// backends are arguments here, never forks in the suite.
#[derive(Clone, Debug)]
pub struct Setup {
    /// The clock the store must take its time from.
    pub clock: ManualClock,
    /// The store's `max_meta_bytes`.
    pub max_meta_bytes: usize,
    /// Events buffered per subscriber before it gets `Resync`.
    pub event_buffer: usize,
}

/// Where every suite clock starts: an ordinary recent time.
pub const START: Timestamp = Timestamp::from_millis(1_700_000_000_000);

impl Default for Setup {
    fn default() -> Self {
        Self {
            clock: ManualClock::new(START),
            max_meta_bytes: DEFAULT_MAX_META_BYTES,
            event_buffer: 4096,
        }
    }
}

/// Opens fresh stores of one backend for the suite.
#[async_trait]
pub trait Backend: Send + Sync {
    /// A new, empty store that shares nothing with stores opened before
    /// (its own schema, file or map), configured by `setup`.
    async fn open(&self, setup: &Setup) -> Arc<dyn PresenceStore>;

    /// A new store as [`open`](Self::open) makes it, with a [`Damage`] that
    /// writes into the same storage behind the store's back; `None` (the
    /// default) for a backend whose storage cannot hold rows the store
    /// cannot decode (memory).
    async fn open_damaged(
        &self,
        setup: &Setup,
    ) -> Option<(Arc<dyn PresenceStore>, Box<dyn Damage>)> {
        let _ = setup;
        None
    }

    /// Why this backend cannot run here (say, no database server), if so.
    /// The suite's tests then say so loudly and pass; a backend that must
    /// run (in CI) panics here instead.
    fn unavailable(&self) -> Option<String> {
        None
    }
}

/// Runs one property on a fresh multi-threaded runtime, so concurrency
/// properties really race. Used by [`suite!`].
pub fn run<F: Future<Output = ()>>(property: F) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(property);
}

/// The memory properties, in a test binary of their own: it installs a
/// counting global allocator (one per binary), so put it in its own test
/// file, e.g. `tests/footprint.rs`: `conformance::footprint_suite!(MyBackend);`.
#[macro_export]
macro_rules! footprint_suite {
    ($backend:expr) => {
        #[global_allocator]
        static ALLOCATED: $crate::cap::Cap<::std::alloc::System> =
            $crate::cap::Cap::new(::std::alloc::System, usize::MAX);

        #[test]
        fn subscriptions_release_memory() {
            let backend = $backend;
            if let Some(why) = $crate::Backend::unavailable(&backend) {
                eprintln!("SKIPPED subscriptions_release_memory: {why}");
                return;
            }
            $crate::run($crate::subscriptions_release_memory(&backend, || {
                ALLOCATED.allocated()
            }));
        }
    };
}

/// Stamps out one `#[test]` per property of the suite for a backend.
///
/// `$backend` is an expression evaluating to a [`Backend`]; it is evaluated
/// once per test.
#[macro_export]
macro_rules! suite {
    ($backend:expr) => {
        $crate::suite!(@properties $backend;
            join_creates_an_entry,
            join_is_idempotent,
            members_count_a_member_once,
            members_are_ordered,
            count_matches_members,
            update_changes_only_present_entries,
            touch_refreshes_only_last_seen,
            touch_many_returns_absent_keys,
            leave_reports_last_for_member,
            leave_member_removes_every_connection,
            disconnect_leaves_every_topic,
            sweep_removes_strictly_older,
            sweep_all_reports_each_member_once,
            topics_of_is_sorted,
            ids_are_byte_exact,
            join_limited_admits_up_to_the_limit,
            invalid_ids_name_their_field,
            oversized_meta_changes_nothing,
            oversized_batch_changes_nothing,
            events_follow_every_change,
            touch_emits_no_event,
            events_stay_in_their_topic,
            slow_subscriber_gets_resync,
            state_machine_matches_model,
            concurrent_joins_of_one_key,
            join_limited_is_exact_under_contention,
            concurrent_sweepers_report_each_entry_once,
            churn_keeps_member_transitions_alternating,
            close_ends_streams_and_refuses_calls,
            deepest_meta_reads_back,
            undecodable_rows_never_stop_removals,
        );
    };
    (@properties $backend:expr; $($property:ident),* $(,)?) => {
        $(
            #[test]
            fn $property() {
                let backend = $backend;
                if let Some(why) = $crate::Backend::unavailable(&backend) {
                    eprintln!("SKIPPED {}: {why}", stringify!($property));
                    return;
                }
                $crate::run($crate::$property(&backend));
            }
        )*
    };
}
