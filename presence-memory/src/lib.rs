#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod config;
mod index;
mod store;
mod topic;

pub use config::MemoryConfig;
pub use presence_core;
pub use store::MemoryStore;
