#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod batch;
mod config;
mod listener;
mod schema;
mod store;
#[doc(hidden)]
pub mod testing;
mod wire;

pub use config::PostgresConfig;
pub use deadpool_postgres;
pub use presence_core;
pub use schema::SCHEMA_VERSION;
pub use store::PostgresStore;
pub use tokio_postgres;
