//! Connections: one server through redis-rs's `ConnectionManager`
//! (multiplexed, reconnects by itself), or a Redis Cluster through its
//! cluster client (routes each command to the shard of its first key,
//! follows slot moves). Both behind one [`Conn`] that scripts run on.

use std::fmt;
use std::time::Duration;

use presence_core::{Error, Result};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, ProtocolVersion, PushInfo, RedisFuture, Value};
use tokio::sync::mpsc::UnboundedSender;

use crate::config::RedisConfig;

pub(crate) const BACKEND: &str = "redis";

/// Where the store connects.
#[derive(Clone)]
pub(crate) enum Target {
    Single(Box<redis::Client>),
    /// The nodes, and the PEM of the CA certificates to trust instead of the
    /// webpki roots (`tls_root_cert`).
    Cluster(Vec<String>, Option<Vec<u8>>),
}

/// A call that did not finish in time.
#[derive(Debug)]
pub(crate) struct TimedOut {
    pub(crate) what: &'static str,
    pub(crate) after: Duration,
}

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} got no answer within {:?}", self.what, self.after)
    }
}

impl std::error::Error for TimedOut {}

/// A redis-rs error as this backend's error, its type kept as the source.
pub(crate) fn backend(error: redis::RedisError) -> Error {
    presence_core::metrics::backend_error(BACKEND);
    Error::backend(BACKEND, error)
}

/// Runs `future`, failing with [`TimedOut`] after `after`.
pub(crate) async fn bounded<T>(
    what: &'static str,
    after: Duration,
    future: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T> {
    match tokio::time::timeout(after, future).await {
        Ok(result) => result.map_err(backend),
        Err(_) => {
            presence_core::metrics::backend_error(BACKEND);
            Err(Error::backend(BACKEND, TimedOut { what, after }))
        }
    }
}

fn is_tls(url: &str) -> bool {
    url.starts_with("rediss://") || url.starts_with("rediss+cluster://")
}

fn check_tls(url: &str) -> Result<()> {
    if is_tls(url) && !cfg!(feature = "tls") {
        return Err(Error::invalid(
            "url",
            "rediss:// needs the `tls` feature of presence-redis",
        ));
    }
    Ok(())
}

/// The node URLs of `redis+cluster://[userinfo@]host1,host2/`.
fn cluster_nodes(url: &str) -> Option<Vec<String>> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("redis+cluster://") {
        ("redis", rest)
    } else {
        ("rediss", url.strip_prefix("rediss+cluster://")?)
    };
    let authority = rest.split('/').next().unwrap_or("");
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (format!("{userinfo}@"), hosts),
        None => (String::new(), authority),
    };
    Some(
        hosts
            .split(',')
            .filter(|host| !host.is_empty())
            .map(|host| format!("{scheme}://{userinfo}{host}"))
            .collect(),
    )
}

/// A single server's client, speaking RESP3 (needed for pushes).
pub(crate) fn resp3(client: &redis::Client) -> Result<redis::Client> {
    let info = client.get_connection_info().clone();
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    redis::Client::open(info.set_redis_settings(settings)).map_err(backend)
}

const ROOT_CERT: &str = "tls_root_cert";

/// The contents of `config.tls_root_cert`, if set: refused (naming the field)
/// without the `tls` feature, for `urls` that are not all TLS, or when the
/// file cannot be read or holds no certificate.
fn root_cert(config: &RedisConfig, urls: &[&str]) -> Result<Option<Vec<u8>>> {
    match &config.tls_root_cert {
        Some(path) => read_root_cert(path, urls).map(Some),
        None => Ok(None),
    }
}

#[cfg(not(feature = "tls"))]
fn read_root_cert(_: &std::path::Path, _: &[&str]) -> Result<Vec<u8>> {
    Err(Error::invalid(
        ROOT_CERT,
        "needs the `tls` feature of presence-redis",
    ))
}

#[cfg(feature = "tls")]
fn read_root_cert(path: &std::path::Path, urls: &[&str]) -> Result<Vec<u8>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    if let Some(plain) = urls.iter().find(|url| !is_tls(url)) {
        return Err(Error::invalid(
            ROOT_CERT,
            format!(
                "is for rediss:// servers, and {} is not one",
                crate::config::redact(plain)
            ),
        ));
    }
    let pem = std::fs::read(path).map_err(|e| {
        Error::invalid(
            ROOT_CERT,
            format!("cannot be read ({}): {e}", path.display()),
        )
    })?;
    // Counted as redis-rs reads them: other PEM sections (a key) are skipped.
    let mut certificates = 0;
    for certificate in CertificateDer::pem_slice_iter(&pem) {
        certificate.map_err(|e| {
            Error::invalid(ROOT_CERT, format!("is not PEM ({}): {e}", path.display()))
        })?;
        certificates += 1;
    }
    if certificates == 0 {
        return Err(Error::invalid(
            ROOT_CERT,
            format!(
                "holds no PEM certificate (-----BEGIN CERTIFICATE-----): {}",
                path.display()
            ),
        ));
    }
    Ok(pem)
}

/// `client` trusting the CA certificates of `pem` instead of the webpki roots.
#[cfg(feature = "tls")]
fn trusting(client: &redis::Client, pem: &[u8]) -> Result<redis::Client> {
    redis::Client::build_with_tls(
        client.get_connection_info().clone(),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem.to_vec()),
        },
    )
    .map_err(|e| Error::invalid(ROOT_CERT, format!("is not usable: {e}")))
}

/// Makes sure rustls has a process-wide crypto provider before redis-rs
/// builds a TLS client config (it panics without one): ring's, unless the
/// app installed one of its own first.
#[cfg(feature = "tls")]
fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race to another install is fine: that one is in place.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

impl Target {
    pub(crate) fn from_config(config: &RedisConfig) -> Result<Self> {
        if !config.nodes.is_empty() {
            for node in &config.nodes {
                check_tls(node)?;
            }
            let urls: Vec<&str> = config.nodes.iter().map(String::as_str).collect();
            let root = root_cert(config, &urls)?;
            return Self::cluster(config.nodes.clone(), root);
        }
        check_tls(&config.url)?;
        if let Some(nodes) = cluster_nodes(&config.url) {
            if nodes.is_empty() {
                return Err(Error::invalid("url", "names no cluster node"));
            }
            let root = root_cert(config, &[&config.url])?;
            return Self::cluster(nodes, root);
        }
        let client = redis::Client::open(config.url.as_str()).map_err(|e| {
            Error::invalid(
                "url",
                format!(
                    "is not a redis://, rediss:// or redis+cluster:// URL ({:?})",
                    e.kind()
                ),
            )
        })?;
        // Without the `tls` feature, `root_cert` refuses any setting.
        let root = root_cert(config, &[&config.url])?;
        #[cfg(feature = "tls")]
        let client = match root {
            Some(pem) => trusting(&client, &pem)?,
            None => client,
        };
        #[cfg(not(feature = "tls"))]
        let _ = root;
        Ok(Target::Single(Box::new(resp3(&client)?)))
    }

    /// A cluster target; the CA certificates, if any, are checked here (with
    /// the first node) so that a bad file is refused by its field's name.
    fn cluster(nodes: Vec<String>, root: Option<Vec<u8>>) -> Result<Self> {
        #[cfg(feature = "tls")]
        if let (Some(pem), Some(first)) = (&root, nodes.first())
            && let Ok(client) = redis::Client::open(first.as_str())
        {
            trusting(&client, pem)?;
        }
        Ok(Target::Cluster(nodes, root))
    }

    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Target::Cluster(..))
    }

    /// Whether connecting speaks TLS.
    #[cfg(feature = "tls")]
    fn uses_tls(&self) -> bool {
        match self {
            Target::Single(client) => matches!(
                client.get_connection_info().addr(),
                redis::ConnectionAddr::TcpTls { .. }
            ),
            Target::Cluster(nodes, root) => root.is_some() || nodes.iter().any(|n| is_tls(n)),
        }
    }

    fn cluster_client(
        nodes: &[String],
        root: Option<&[u8]>,
        config: &RedisConfig,
        push: Option<UnboundedSender<PushInfo>>,
    ) -> Result<ClusterClient> {
        let mut builder = ClusterClientBuilder::new(nodes.to_vec())
            .use_protocol(ProtocolVersion::RESP3)
            .connection_timeout(config.connect_timeout)
            .response_timeout(config.command_timeout)
            .retries(3)
            .min_retry_wait(20)
            .max_retry_wait(500);
        if let Some(push) = push {
            builder = builder.push_sender(push);
        }
        #[cfg(feature = "tls")]
        if let Some(pem) = root {
            builder = builder.certs(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.to_vec()),
            });
        }
        #[cfg(not(feature = "tls"))]
        let _ = root;
        builder.build().map_err(|e| {
            Error::invalid(
                "nodes",
                format!("are not redis:// URLs of cluster nodes ({:?})", e.kind()),
            )
        })
    }

    /// Connects; `push` receives the connection's pushes (pub/sub).
    pub(crate) async fn connect(
        &self,
        config: &RedisConfig,
        push: Option<UnboundedSender<PushInfo>>,
    ) -> Result<Conn> {
        let after = config.connect_timeout;
        #[cfg(feature = "tls")]
        if self.uses_tls() {
            ensure_crypto_provider();
        }
        match self {
            Target::Single(client) => {
                let mut settings = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(config.connect_timeout))
                    .set_response_timeout(Some(config.command_timeout))
                    .set_number_of_retries(3)
                    .set_max_delay(Duration::from_millis(500));
                if let Some(push) = push {
                    settings = settings
                        .set_push_sender(push)
                        .set_automatic_resubscription();
                }
                let manager = bounded(
                    "connecting",
                    after,
                    ConnectionManager::new_with_config((**client).clone(), settings),
                )
                .await?;
                Ok(Conn::Single(manager))
            }
            Target::Cluster(nodes, root) => {
                let client = Self::cluster_client(nodes, root.as_deref(), config, push)?;
                let settings = ClusterConfig::new()
                    .set_connection_timeout(config.connect_timeout)
                    .set_response_timeout(config.command_timeout);
                let connection = bounded(
                    "connecting to the cluster",
                    after,
                    client.get_async_connection_with_config(settings),
                )
                .await?;
                Ok(Conn::Cluster(connection))
            }
        }
    }
}

/// A connection to one server or to a cluster; cloning is cheap and clones
/// share the connection.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_name_their_nodes() {
        assert_eq!(
            cluster_nodes("redis+cluster://:pw@h1:7000,h2:7001/").unwrap(),
            ["redis://:pw@h1:7000", "redis://:pw@h2:7001"]
        );
        assert_eq!(
            cluster_nodes("rediss+cluster://h1").unwrap(),
            ["rediss://h1"]
        );
        assert!(cluster_nodes("redis://h1").is_none());
    }

    #[test]
    fn tls_root_cert_is_refused_by_name() {
        let mut config = RedisConfig::new("redis://localhost");
        config.tls_root_cert = Some("/no/such/ca.pem".into());
        let error = Target::from_config(&config).err().unwrap();
        assert_eq!(error.invalid_field(), Some("tls_root_cert"), "{error}");
        if !cfg!(feature = "tls") {
            assert!(error.to_string().contains("`tls` feature"), "{error}");
        }
    }

    #[test]
    fn bad_urls_are_refused_by_field() {
        let config = RedisConfig::new("http://nope");
        assert_eq!(
            Target::from_config(&config).err().unwrap().invalid_field(),
            Some("url")
        );
        let config = RedisConfig::new("redis+cluster:///");
        assert_eq!(
            Target::from_config(&config).err().unwrap().invalid_field(),
            Some("url")
        );
    }
}
