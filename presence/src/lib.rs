#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod channels;
mod connect;
mod heartbeats;
mod live;
mod sweeper;
mod sync;
mod tracker;

pub use channels::{
    Access, ChannelConfig, ChannelMember, ChannelMembers, ChannelUpdate, ChannelUpdates, Channels,
    Enricher, Resolver,
};
pub use connect::{ConnectOptions, connect, connect_with, migrate, redact};
pub use heartbeats::{AbsentHandler, Heartbeats};
pub use live::{Diff, LiveMembers, LiveUpdate, LiveUpdates};
pub use presence_core::*;
pub use sweeper::{DepartureHandler, Sweeper, SweeperHandle};
pub use tracker::{Heartbeat, Tracked, Tracker, TrackerConfig};

/// The in-process store (feature `memory`).
#[cfg(feature = "memory")]
pub use presence_memory as memory;
/// The shared Postgres store (feature `postgres`).
#[cfg(feature = "postgres")]
pub use presence_postgres as postgres;
/// The Redis store (feature `redis`).
#[cfg(feature = "redis")]
pub use presence_redis as redis;
/// The embedded SQLite store (feature `sqlite`).
#[cfg(feature = "sqlite")]
pub use presence_sqlite as sqlite;
