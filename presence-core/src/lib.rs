#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod broadcast;
mod error;
mod ids;
mod meta;
pub mod metrics;
mod redact;
mod store;
mod time;
mod types;

pub use broadcast::TopicBroadcast;
pub use error::{Chain, Error, Result, SharedError, SharedSource};
pub use ids::{ConnectionId, MAX_ID_BYTES, MemberId, PresenceKey, Topic};
pub use meta::{DEFAULT_MAX_META_BYTES, MAX_META_DEPTH, Meta};
pub use redact::{MASK, is_secret_parameter, redact_url};
pub use store::{EventStream, MAX_BATCH_KEYS, PresenceStore, PresenceStoreExt, check_batch};
pub use time::{Clock, ManualClock, SystemClock, Timestamp, system_clock};
pub use types::{Connection, Counts, Departure, Entry, Event, Joined, Member, Reason};

/// Re-exported so backends and apps name the same `serde_json`.
pub use serde_json;
