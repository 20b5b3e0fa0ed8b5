use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use presence_core::{Clock, DEFAULT_MAX_META_BYTES, Error, Result, system_clock};

use crate::redact::redact;

/// How a [`PostgresStore`](crate::PostgresStore) connects. Plain fields;
/// start from [`PostgresConfig::new`] (or [`PostgresConfig::from_url`]) and
/// change what you need.
///
/// Every wait has a bound: a server that accepts connections and never
/// answers, or one that stops answering mid-call, fails the call with
/// `Error::Backend` naming what timed out, within the timeouts here.
#[derive(Clone)]
pub struct PostgresConfig {
    /// The server, as a `postgres://` URL or a key=value string, as
    /// tokio-postgres reads it (without the store's own parameters; see
    /// [`from_url`](Self::from_url)). Never printed: `Debug` shows it with
    /// its password masked.
    pub url: String,
    /// The schema that holds everything the store creates. Lowercase ASCII
    /// letters, digits and `_`, at most 48 bytes, not starting with a digit.
    pub schema: String,
    /// Connections in the pool (the event listener has one more).
    pub pool_size: usize,
    /// The largest meta accepted, serialized, in bytes.
    pub max_meta_bytes: usize,
    /// Where timestamps come from.
    pub clock: Arc<dyn Clock>,
    /// Events kept per subscribed topic for a slow subscriber.
    pub event_buffer: usize,
    /// Whether TLS is used and what is verified (see [`SslMode`]).
    pub sslmode: SslMode,
    /// The CA certificates (PEM) that server certificates must chain to;
    /// `None`: the system's roots.
    pub sslrootcert: Option<PathBuf>,
    /// The longest a new connection (TCP, TLS, start-up and login) may
    /// take, for the event listener. Default 5 s.
    pub connect_timeout: Duration,
    /// The longest one call's statements may take on the server once it
    /// has a connection; a connection whose call timed out is discarded.
    /// Default 10 s.
    pub call_timeout: Duration,
    /// The longest a call waits for a free pooled connection. Default 5 s.
    pub pool_wait_timeout: Duration,
    /// The longest the pool may take to open a connection. Default 5 s.
    pub pool_create_timeout: Duration,
    /// The longest the pool may take to check an idle connection before
    /// handing it out. Default 5 s.
    pub pool_recycle_timeout: Duration,
    /// The longest [`PostgresStore::connect`](crate::PostgresStore::connect)
    /// waits for the event listener's first LISTEN. Default 10 s.
    pub listen_timeout: Duration,
    /// The longest `subscribe` waits for the listener to confirm the
    /// subscription. Default 10 s.
    pub subscribe_timeout: Duration,
    /// How often the event listener checks that its connection still
    /// answers (a connection that does not within `call_timeout` is
    /// replaced, and subscribers get `Resync`). Default 30 s.
    pub listener_ping_interval: Duration,
    /// Whether opening a store creates or upgrades its schema. With
    /// `false`, opening only checks the schema's version and refuses one
    /// that is missing, older or newer than this code; run
    /// [`PostgresStore::migrate`](crate::PostgresStore::migrate) as its
    /// own step (with a role allowed to). Default `true`.
    pub migrate_on_open: bool,
    /// The most entries one sweep transaction removes: a `sweep_all` of
    /// many expired entries runs as several transactions of whole topics,
    /// so other writes interleave. Default 1,000 (see BENCHMARKS.md).
    pub sweep_chunk: usize,
}

/// Whether the store's connections use TLS, and what they verify; the
/// libpq names. Modes other than `Disable` and `Prefer` need the `tls`
/// feature.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SslMode {
    /// Plaintext only.
    Disable,
    /// TLS when the server offers it (the certificate is not verified),
    /// plaintext otherwise. Without the `tls` feature: plaintext. The
    /// default, as in libpq.
    #[default]
    Prefer,
    /// TLS or nothing; the certificate is verified only when
    /// `sslrootcert` is given (as libpq does).
    Require,
    /// TLS, with a certificate that chains to the roots; any host name.
    VerifyCa,
    /// TLS, with a certificate that chains to the roots and names the host.
    VerifyFull,
}

impl SslMode {
    /// The libpq name (`disable`, `prefer`, `require`, `verify-ca`, `verify-full`).
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl std::str::FromStr for SslMode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => {
                return Err(Error::invalid(
                    "sslmode",
                    "must be disable, prefer, require, verify-ca or verify-full",
                ));
            }
        })
    }
}

/// The parameters [`PostgresConfig::from_url`] takes out of a connection
/// string for the store itself; every other parameter goes to tokio-postgres.
pub const STORE_PARAMETERS: &[&str] = &[
    "schema",
    "pool_size",
    "max_meta_bytes",
    "event_buffer",
    "sslmode",
    "sslrootcert",
    "connect_timeout",
    "call_timeout",
    "pool_wait_timeout",
    "pool_create_timeout",
    "pool_recycle_timeout",
    "listen_timeout",
    "subscribe_timeout",
    "listener_ping_interval",
    "migrate_on_open",
    "sweep_chunk",
];

impl PostgresConfig {
    /// The defaults for the server at `url`: schema `presence`, a pool of 8,
    /// `sslmode=prefer`, the timeouts documented on each field. `url` is
    /// used as it is; [`from_url`](Self::from_url) also reads the store's
    /// own parameters out of it.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: "presence".to_owned(),
            pool_size: 8,
            max_meta_bytes: DEFAULT_MAX_META_BYTES,
            clock: system_clock(),
            event_buffer: 1024,
            sslmode: SslMode::default(),
            sslrootcert: None,
            connect_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(10),
            pool_wait_timeout: Duration::from_secs(5),
            pool_create_timeout: Duration::from_secs(5),
            pool_recycle_timeout: Duration::from_secs(5),
            listen_timeout: Duration::from_secs(10),
            subscribe_timeout: Duration::from_secs(10),
            listener_ping_interval: Duration::from_secs(30),
            migrate_on_open: true,
            sweep_chunk: 1_000,
        }
    }

    /// A config from a connection string (`postgres://user:pw@host/db?k=v`
    /// or `host=... user=... k=v`): the parameters named in
    /// [`STORE_PARAMETERS`] are taken out and set the fields of the same
    /// names; the rest stays in [`url`](Self::url) for tokio-postgres,
    /// which refuses the ones it does not know. Durations are seconds
    /// (`connect_timeout=3`, `call_timeout=2.5`) or carry a unit (`500ms`,
    /// `3s`); `migrate_on_open` is `true` or `false`. As in libpq,
    /// `connect_timeout` bounds every connection the store makes: it sets
    /// `pool_create_timeout` too (a later `pool_create_timeout` wins).
    ///
    /// Fails with `InvalidInput` naming the parameter that is unknown or
    /// has a bad value (`url` for a string that is not a connection string).
    ///
    /// ```
    /// # use presence_postgres::{PostgresConfig, SslMode};
    /// let config = PostgresConfig::from_url(
    ///     "postgres://app:secret@db.internal/app?schema=rooms&sslmode=verify-full&call_timeout=3",
    /// )?;
    /// assert_eq!(config.schema, "rooms");
    /// assert_eq!(config.sslmode, SslMode::VerifyFull);
    /// assert_eq!(config.call_timeout, std::time::Duration::from_secs(3));
    /// assert_eq!(config.url, "postgres://app:secret@db.internal/app");
    /// assert!(!format!("{config:?}").contains("secret"));
    /// # Ok::<(), presence_core::Error>(())
    /// ```
    pub fn from_url(url: &str) -> Result<Self> {
        let (driver, ours) = crate::params::split(url)?;
        let mut config = Self::new(driver);
        for (key, value) in ours {
            config.set(&key, &value)?;
        }
        config.driver_config()?;
        Ok(config)
    }

    /// Sets the store parameter `key` (one of [`STORE_PARAMETERS`]) from its
    /// text, as in a connection string. Fails with `InvalidInput` naming
    /// the parameter when `key` is not one or `value` is not valid for it.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let Some(&field) = STORE_PARAMETERS.iter().find(|name| **name == key) else {
            return Err(Error::invalid(
                "url",
                format!("unknown parameter {key:?} (store parameters: {STORE_PARAMETERS:?})"),
            ));
        };
        let count = |value: &str| -> Result<usize> {
            value
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| Error::invalid(field, "must be a whole number above 0"))
        };
        match field {
            "schema" => self.schema = value.to_owned(),
            "pool_size" => self.pool_size = count(value)?,
            "max_meta_bytes" => self.max_meta_bytes = count(value)?,
            "event_buffer" => self.event_buffer = count(value)?,
            "sweep_chunk" => self.sweep_chunk = count(value)?,
            "sslmode" => self.sslmode = value.parse()?,
            "sslrootcert" if value.is_empty() => {
                return Err(Error::invalid("sslrootcert", "must name a file"));
            }
            "sslrootcert" if value == "system" => self.sslrootcert = None,
            "sslrootcert" => self.sslrootcert = Some(PathBuf::from(value)),
            "migrate_on_open" => {
                self.migrate_on_open = match value {
                    "true" | "1" | "on" | "yes" => true,
                    "false" | "0" | "off" | "no" => false,
                    _ => return Err(Error::invalid(field, "must be true or false")),
                }
            }
            _ => {
                let duration = parse_duration(value).ok_or_else(|| {
                    Error::invalid(
                        field,
                        "must be a duration above 0: seconds (3, 2.5) or with a unit (500ms, 3s)",
                    )
                })?;
                *self
                    .timeout_mut(field)
                    .expect("every other parameter is a timeout") = duration;
                if field == "connect_timeout" {
                    // libpq's connect_timeout bounds every connection made.
                    self.pool_create_timeout = duration;
                }
            }
        }
        Ok(())
    }

    fn timeout_mut(&mut self, field: &str) -> Option<&mut Duration> {
        Some(match field {
            "connect_timeout" => &mut self.connect_timeout,
            "call_timeout" => &mut self.call_timeout,
            "pool_wait_timeout" => &mut self.pool_wait_timeout,
            "pool_create_timeout" => &mut self.pool_create_timeout,
            "pool_recycle_timeout" => &mut self.pool_recycle_timeout,
            "listen_timeout" => &mut self.listen_timeout,
            "subscribe_timeout" => &mut self.subscribe_timeout,
            "listener_ping_interval" => &mut self.listener_ping_interval,
            _ => return None,
        })
    }

    /// Checks every setting; the first bad one is named.
    pub(crate) fn check(&self) -> Result<()> {
        self.checked_schema()?;
        for (field, value) in [
            ("pool_size", self.pool_size),
            ("max_meta_bytes", self.max_meta_bytes),
            ("event_buffer", self.event_buffer),
            ("sweep_chunk", self.sweep_chunk),
        ] {
            if value == 0 {
                return Err(Error::invalid(field, "must be above 0"));
            }
        }
        let mut copy = self.clone();
        for field in STORE_PARAMETERS {
            if let Some(duration) = copy.timeout_mut(field)
                && duration.is_zero()
            {
                return Err(Error::invalid(field, "must be above 0"));
            }
        }
        Ok(())
    }

    /// The tokio-postgres config of [`url`](Self::url), with the store's
    /// connect timeout (for the TCP connect; the whole connect is bounded
    /// by the store too).
    pub(crate) fn driver_config(&self) -> Result<tokio_postgres::Config> {
        let mut pg: tokio_postgres::Config = self.url.parse().map_err(|e| {
            // tokio-postgres's parse errors never quote values, so no secret.
            Error::invalid("url", format!("is not a Postgres connection string: {e}"))
        })?;
        pg.connect_timeout(self.connect_timeout);
        Ok(pg)
    }

    /// The schema name, checked: it is written into SQL as an identifier and
    /// is the name of the store's NOTIFY channel.
    pub(crate) fn checked_schema(&self) -> Result<&str> {
        let schema = self.schema.as_str();
        let valid = !schema.is_empty()
            && schema.len() <= 48
            && schema
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && !schema.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            return Err(Error::invalid(
                "schema",
                "must be 1 to 48 lowercase ASCII letters, digits or '_', not starting with a digit",
            ));
        }
        Ok(schema)
    }
}

/// `3`, `2.5` (seconds), `500ms`, `3s`; `None` for anything else or zero.
fn parse_duration(text: &str) -> Option<Duration> {
    let (number, scale) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 0.001)
    } else if let Some(s) = text.strip_suffix('s') {
        (s, 1.0)
    } else {
        (text, 1.0)
    };
    let seconds: f64 = number.trim().parse().ok()?;
    let seconds = seconds * scale;
    (seconds.is_finite() && seconds > 0.0 && seconds < 1e9)
        .then(|| Duration::from_secs_f64(seconds))
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &redact(&self.url))
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("max_meta_bytes", &self.max_meta_bytes)
            .field("event_buffer", &self.event_buffer)
            .field("sslmode", &self.sslmode)
            .field("sslrootcert", &self.sslrootcert)
            .field("connect_timeout", &self.connect_timeout)
            .field("call_timeout", &self.call_timeout)
            .field("pool_wait_timeout", &self.pool_wait_timeout)
            .field("pool_create_timeout", &self.pool_create_timeout)
            .field("pool_recycle_timeout", &self.pool_recycle_timeout)
            .field("listen_timeout", &self.listen_timeout)
            .field("subscribe_timeout", &self.subscribe_timeout)
            .field("listener_ping_interval", &self.listener_ping_interval)
            .field("migrate_on_open", &self.migrate_on_open)
            .field("sweep_chunk", &self.sweep_chunk)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_parameters_are_taken_out_of_urls_and_key_value_strings() {
        let config = PostgresConfig::from_url(
            "postgres://u:p%40ss@h:5433/db?application_name=x&schema=s1&pool_size=3&connect_timeout=2.5&listen_timeout=700ms&migrate_on_open=false&sslrootcert=/ca.pem",
        )
        .unwrap();
        assert_eq!(
            config.url,
            "postgres://u:p%40ss@h:5433/db?application_name=x"
        );
        assert_eq!(config.schema, "s1");
        assert_eq!(config.pool_size, 3);
        assert_eq!(config.connect_timeout, Duration::from_millis(2500));
        assert_eq!(config.listen_timeout, Duration::from_millis(700));
        assert!(!config.migrate_on_open);
        assert_eq!(config.sslrootcert, Some(PathBuf::from("/ca.pem")));

        let config = PostgresConfig::from_url(
            "host=h user=u password='a b\\'c' sslmode=require schema=s2 dbname=d",
        )
        .unwrap();
        assert_eq!(config.url, "host=h user=u password='a b\\'c' dbname=d");
        assert_eq!(config.sslmode, SslMode::Require);
        assert_eq!(config.schema, "s2");
        let pg = config.driver_config().unwrap();
        assert_eq!(pg.get_password(), Some(&b"a b'c"[..]));
    }

    #[test]
    fn unknown_and_bad_parameters_are_refused_by_name() {
        let field = |url: &str| PostgresConfig::from_url(url).unwrap_err();
        let err = field("postgres://h/db?colour=blue");
        assert_eq!(err.invalid_field(), Some("url"));
        assert!(err.to_string().contains("colour"), "{err}");
        for (url, name) in [
            ("postgres://h/db?pool_size=0", "pool_size"),
            ("postgres://h/db?call_timeout=0", "call_timeout"),
            ("postgres://h/db?call_timeout=soon", "call_timeout"),
            ("host=h sslmode=maybe", "sslmode"),
            ("postgres://h/db?migrate_on_open=perhaps", "migrate_on_open"),
        ] {
            assert_eq!(field(url).invalid_field(), Some(name), "{url}");
        }
        assert_eq!(field("not a url at all").invalid_field(), Some("url"));
    }

    #[test]
    fn debug_never_shows_the_password() {
        for url in [
            "postgres://app:hunter2@db/app",
            "postgresql://app:hunter2@db/app?password=hunter2",
            "host=db password=hunter2 user=app",
            "host=db password='hunter2 x' user=app",
        ] {
            let shown = format!("{:?}", PostgresConfig::new(url));
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains("db"), "{shown}");
        }
    }

    #[test]
    fn zero_settings_are_refused_by_name() {
        let mut config = PostgresConfig::new("host=h");
        config.call_timeout = Duration::ZERO;
        assert_eq!(
            config.check().unwrap_err().invalid_field(),
            Some("call_timeout")
        );
        let mut config = PostgresConfig::new("host=h");
        config.sweep_chunk = 0;
        assert_eq!(
            config.check().unwrap_err().invalid_field(),
            Some("sweep_chunk")
        );
    }
}
