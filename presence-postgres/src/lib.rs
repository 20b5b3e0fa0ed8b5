#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod batch;
mod config;
mod connector;
mod db;
mod errors;
mod listener;
mod params;
mod redact;
mod rows;
mod schema;
mod store;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;
#[cfg(feature = "tls")]
mod tls;
mod wire;

pub use config::{PostgresConfig, STORE_PARAMETERS, SslMode};
pub use deadpool_postgres;
pub use errors::Timeout;
pub use presence_core;
pub use redact::redact;
pub use schema::SCHEMA_VERSION;
pub use store::{PostgresStore, StoreTls};
pub use tokio_postgres;
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub use tokio_postgres_rustls;
