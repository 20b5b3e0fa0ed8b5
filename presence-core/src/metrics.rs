//! What the stores measure, through the [`metrics`](https://docs.rs/metrics)
//! facade: with the `metrics` feature on, every backend records these; the
//! app installs the exporter (Prometheus, StatsD, ...). With it off, each
//! function here is empty and costs nothing.
//!
//! Every metric carries a `backend` label (`memory`, `sqlite`, `postgres`,
//! ...) and never a topic, member or connection: their number is unbounded.
//!
//! | metric | kind | labels | what |
//! | --- | --- | --- | --- |
//! | `presence_joins_total` | counter | `backend`, `outcome` (`new`, `rejoin`, `full`) | joins |
//! | `presence_departures_total` | counter | `backend`, `reason` (`left`, `expired`, `disconnected`) | entries removed |
//! | `presence_touched_keys_total` | counter | `backend` | keys heartbeated |
//! | `presence_absent_keys_total` | counter | `backend` | heartbeated keys that were absent |
//! | `presence_batch_size` | histogram | `backend`, `kind` (`join`, `touch`, `leave`, `commit`, ...) | calls carried by one statement or transaction |
//! | `presence_commit_seconds` | histogram | `backend` | one write transaction, start to commit |
//! | `presence_sweep_seconds` | histogram | `backend` | one `sweep_all` |
//! | `presence_resyncs_total` | counter | `backend` | `Resync` events handed to subscribers |
//! | `presence_pool_wait_seconds` | histogram | `backend` | waiting for a pooled connection |
//! | `presence_backend_errors_total` | counter | `backend` | calls that failed with `Error::Backend` |

use std::time::Duration;

use crate::{Departure, Joined, Reason};

/// `presence_joins_total`.
pub const JOINS: &str = "presence_joins_total";
/// `presence_departures_total`.
pub const DEPARTURES: &str = "presence_departures_total";
/// `presence_touched_keys_total`.
pub const TOUCHED_KEYS: &str = "presence_touched_keys_total";
/// `presence_absent_keys_total`.
pub const ABSENT_KEYS: &str = "presence_absent_keys_total";
/// `presence_batch_size`.
pub const BATCH_SIZE: &str = "presence_batch_size";
/// `presence_commit_seconds`.
pub const COMMIT_SECONDS: &str = "presence_commit_seconds";
/// `presence_sweep_seconds`.
pub const SWEEP_SECONDS: &str = "presence_sweep_seconds";
/// `presence_resyncs_total`.
pub const RESYNCS: &str = "presence_resyncs_total";
/// `presence_pool_wait_seconds`.
pub const POOL_WAIT_SECONDS: &str = "presence_pool_wait_seconds";
/// `presence_backend_errors_total`.
pub const BACKEND_ERRORS: &str = "presence_backend_errors_total";

/// The `reason` label of a departure.
pub fn reason_label(reason: Reason) -> &'static str {
    match reason {
        Reason::Left => "left",
        Reason::Expired => "expired",
        Reason::Disconnected => "disconnected",
    }
}

#[cfg(feature = "metrics")]
mod record {
    pub(super) fn count(name: &'static str, labels: &[(&'static str, &'static str)], n: u64) {
        if n > 0 {
            let labels: Vec<::metrics::Label> = labels
                .iter()
                .map(|(key, value)| ::metrics::Label::from_static_parts(key, value))
                .collect();
            ::metrics::counter!(name, labels).increment(n);
        }
    }

    pub(super) fn observe(name: &'static str, labels: &[(&'static str, &'static str)], value: f64) {
        let labels: Vec<::metrics::Label> = labels
            .iter()
            .map(|(key, value)| ::metrics::Label::from_static_parts(key, value))
            .collect();
        ::metrics::histogram!(name, labels).record(value);
    }
}

#[cfg(not(feature = "metrics"))]
mod record {
    #[inline(always)]
    pub(super) fn count(_: &'static str, _: &[(&'static str, &'static str)], _: u64) {}
    #[inline(always)]
    pub(super) fn observe(_: &'static str, _: &[(&'static str, &'static str)], _: f64) {}
}

/// A join's outcome.
pub fn joined(backend: &'static str, joined: &Joined) {
    let outcome = if joined.was_present { "rejoin" } else { "new" };
    record::count(JOINS, &[("backend", backend), ("outcome", outcome)], 1);
}

/// A `join_limited` refused with `TopicFull`.
pub fn join_refused(backend: &'static str) {
    record::count(JOINS, &[("backend", backend), ("outcome", "full")], 1);
}

/// The departures of one removal.
pub fn departed(backend: &'static str, departures: &[Departure]) {
    for reason in [Reason::Left, Reason::Expired, Reason::Disconnected] {
        let n = departures.iter().filter(|d| d.reason == reason).count();
        record::count(
            DEPARTURES,
            &[("backend", backend), ("reason", reason_label(reason))],
            n as u64,
        );
    }
}

/// One heartbeat call: how many keys it carried and how many were absent.
pub fn touched(backend: &'static str, keys: usize, absent: usize) {
    record::count(TOUCHED_KEYS, &[("backend", backend)], keys as u64);
    record::count(ABSENT_KEYS, &[("backend", backend)], absent as u64);
}

/// One batch (statement, script call or transaction) carrying `size` calls.
pub fn batch(backend: &'static str, kind: &'static str, size: usize) {
    record::observe(
        BATCH_SIZE,
        &[("backend", backend), ("kind", kind)],
        size as f64,
    );
}

/// One write transaction, from its start to its commit.
pub fn commit(backend: &'static str, took: Duration) {
    record::observe(COMMIT_SECONDS, &[("backend", backend)], took.as_secs_f64());
}

/// One `sweep_all`.
pub fn sweep(backend: &'static str, took: Duration) {
    record::observe(SWEEP_SECONDS, &[("backend", backend)], took.as_secs_f64());
}

/// A `Resync` handed to a subscriber.
pub fn resync(backend: &'static str) {
    record::count(RESYNCS, &[("backend", backend)], 1);
}

/// Time spent waiting for a pooled connection.
pub fn pool_wait(backend: &'static str, took: Duration) {
    record::observe(
        POOL_WAIT_SECONDS,
        &[("backend", backend)],
        took.as_secs_f64(),
    );
}

/// A call that failed with `Error::Backend`.
pub fn backend_error(backend: &'static str) {
    record::count(BACKEND_ERRORS, &[("backend", backend)], 1);
}
