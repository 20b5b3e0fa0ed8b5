//! `RedisConfig`: where the store connects and how it behaves.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use presence_core::{Clock, DEFAULT_MAX_META_BYTES, Error, Result, system_clock};

/// How a [`RedisStore`](crate::RedisStore) connects and behaves. Plain
/// fields; start from [`RedisConfig::new`] and change what you need.
///
/// `Debug` never prints a password.
#[derive(Clone)]
pub struct RedisConfig {
    /// The server: `redis://[user:password@]host[:port][/db]`, `rediss://`
    /// for TLS (with the `tls` feature), or a cluster as
    /// `redis+cluster://[user:password@]host1:port1,host2:port2/`
    /// (`rediss+cluster://` for TLS). Ignored when [`nodes`](Self::nodes)
    /// is not empty.
    pub url: String,
    /// A Redis Cluster's nodes, as `redis://` (or `rediss://`) URLs; when not
    /// empty, the store connects to the cluster through them. Any few nodes
    /// will do: the rest of the cluster is discovered.
    pub nodes: Vec<String>,
    /// Put in front of every key and channel the store uses, so several
    /// stores (or apps) can share a server. No `{` or `}`; at most 64 bytes.
    pub key_prefix: String,
    /// The largest meta accepted, serialized, in bytes.
    pub max_meta_bytes: usize,
    /// Where timestamps come from. The server's clock is never used.
    pub clock: Arc<dyn Clock>,
    /// Events kept per subscriber for a slow reader before it gets `Resync`.
    pub event_buffer: usize,
    /// How long connecting (TCP, TLS, handshake, cluster discovery) may take.
    pub connect_timeout: Duration,
    /// How long one call may wait for the server (each command or script;
    /// a call that runs several steps is bounded by a small multiple).
    pub command_timeout: Duration,
    /// The most entries one sweep script removes before it lets other
    /// clients' commands run; a topic with more expired entries is swept in
    /// several such pieces.
    pub sweep_piece: usize,
    /// The most calls one batched script carries.
    pub max_batch: usize,
    /// A PEM file of CA certificates to trust for `rediss://` instead of the
    /// webpki roots: for a server (or cluster nodes) whose certificate a
    /// private CA signed. The server's certificate must still name the host
    /// of the URL. Read when the store is created; a file that cannot be
    /// read or holds no certificate is refused, and so is this setting with
    /// URLs or nodes that are not `rediss://` or without the `tls` feature.
    /// [`RedisStore::from_client`](crate::RedisStore::from_client) does not
    /// use it: the app's client carries its own trust (see
    /// `redis::Client::build_with_tls`).
    pub tls_root_cert: Option<PathBuf>,
}

impl RedisConfig {
    /// The defaults for the server (or cluster) at `url`: key prefix
    /// `presence:`, 5 s timeouts, sweeps in pieces of 1,000 entries.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            nodes: Vec::new(),
            key_prefix: "presence:".to_owned(),
            max_meta_bytes: DEFAULT_MAX_META_BYTES,
            clock: system_clock(),
            event_buffer: 1024,
            connect_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(5),
            sweep_piece: 1_000,
            max_batch: 1_000,
            tls_root_cert: None,
        }
    }

    /// The defaults for a Redis Cluster reached through `nodes`.
    pub fn cluster<I, S>(nodes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut config = Self::new("");
        config.nodes = nodes.into_iter().map(Into::into).collect();
        config
    }

    /// Refuses settings the store cannot work with, naming the field.
    pub(crate) fn check(&self) -> Result<()> {
        crate::keys::check_prefix(&self.key_prefix)?;
        let positive = [
            ("max_meta_bytes", self.max_meta_bytes == 0),
            ("event_buffer", self.event_buffer == 0),
            ("connect_timeout", self.connect_timeout.is_zero()),
            ("command_timeout", self.command_timeout.is_zero()),
            ("sweep_piece", self.sweep_piece == 0),
            ("max_batch", self.max_batch == 0),
        ];
        for (field, zero) in positive {
            if zero {
                return Err(Error::invalid(field, "must be greater than zero"));
            }
        }
        if self.sweep_piece > 5_000 {
            return Err(Error::invalid("sweep_piece", "must be at most 5,000"));
        }
        if self.max_batch > 5_000 {
            return Err(Error::invalid("max_batch", "must be at most 5,000"));
        }
        Ok(())
    }
}

/// `url` with any password replaced by `***` (the workspace's one redaction).
pub(crate) fn redact(url: &str) -> String {
    presence_core::redact_url(url)
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact(&self.url))
            .field(
                "nodes",
                &self.nodes.iter().map(|n| redact(n)).collect::<Vec<_>>(),
            )
            .field("key_prefix", &self.key_prefix)
            .field("max_meta_bytes", &self.max_meta_bytes)
            .field("event_buffer", &self.event_buffer)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("sweep_piece", &self.sweep_piece)
            .field("max_batch", &self.max_batch)
            .field("tls_root_cert", &self.tls_root_cert)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact("redis://:hunter2@cache:6379/1"),
            "redis://:***@cache:6379/1"
        );
        assert_eq!(
            redact("rediss://app:hunter2@a:1,b:2/"),
            "rediss://app:***@a:1,b:2/"
        );
        assert_eq!(redact("redis://app@cache"), "redis://app@cache");
        assert_eq!(redact("redis://cache:6379"), "redis://cache:6379");
        let mut config = RedisConfig::new("redis://:hunter2@cache:6379");
        config.nodes = vec!["redis://u:hunter2@n1:7000".into()];
        config.tls_root_cert = Some("/etc/presence/ca.pem".into());
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("/etc/presence/ca.pem"), "{shown}");
    }

    #[test]
    fn zero_settings_are_refused_by_name() {
        for (field, change) in [
            (
                "command_timeout",
                (|c: &mut RedisConfig| c.command_timeout = Duration::ZERO) as fn(&mut RedisConfig),
            ),
            ("connect_timeout", |c| c.connect_timeout = Duration::ZERO),
            ("event_buffer", |c| c.event_buffer = 0),
            ("sweep_piece", |c| c.sweep_piece = 0),
            ("max_batch", |c| c.max_batch = 0),
            ("max_meta_bytes", |c| c.max_meta_bytes = 0),
            ("key_prefix", |c| c.key_prefix = "{x}".into()),
        ] {
            let mut config = RedisConfig::new("redis://localhost");
            change(&mut config);
            assert_eq!(config.check().unwrap_err().invalid_field(), Some(field));
        }
        assert!(RedisConfig::new("redis://localhost").check().is_ok());
    }
}
