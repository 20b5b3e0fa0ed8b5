#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod batch;
mod config;
mod conn;
mod db;
mod events;
mod keys;
mod scripts;
mod shards;
mod store;
#[cfg(feature = "testing")]
pub mod testing;
mod wire;

pub use config::RedisConfig;
pub use presence_core;
pub use redis;
pub use store::RedisStore;
