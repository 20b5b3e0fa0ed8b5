//! Opening a store from a URL, with typed options beside it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use presence_core::{Clock, Error, PresenceStore, Result};
use url::form_urlencoded;

/// The store URL forms [`connect`] understands, for error messages.
const URL_FORMS: &str = "memory://, sqlite://PATH, sqlite::memory:, postgres://USER@HOST/DB \
     (or a key=value Postgres string), redis://HOST, rediss://HOST or redis+cluster://HOST1,HOST2";

/// Settings every store takes, whatever its backend, for code that tests
/// against `memory://` and runs on another URL in production. A setting
/// given here wins over the same parameter in the URL; `None` keeps the
/// URL's value or the backend's default.
///
/// ```
/// # async fn run() -> presence::Result<()> {
/// use std::sync::Arc;
/// use presence::{ConnectOptions, ManualClock, Timestamp};
///
/// let clock = ManualClock::new(Timestamp::from_millis(1_000));
/// let options = ConnectOptions {
///     clock: Some(Arc::new(clock.clone())),
///     max_meta_bytes: Some(512),
///     ..ConnectOptions::default()
/// };
/// let store = presence::connect_with("memory://", options).await?;
/// assert_eq!(store.max_meta_bytes(), 512);
/// assert_eq!(store.clock().now(), Timestamp::from_millis(1_000));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default)]
pub struct ConnectOptions {
    /// Where timestamps come from (default: the system clock).
    pub clock: Option<Arc<dyn Clock>>,
    /// The largest meta accepted, serialized, in bytes (default 4096; URL
    /// parameter `max_meta_bytes`).
    pub max_meta_bytes: Option<usize>,
    /// Events kept per subscriber before it gets `Resync` (default 1024;
    /// URL parameter `event_buffer`).
    pub event_buffer: Option<usize>,
}

/// What a URL says about the store, backend by backend. Parsed the same
/// whatever features are on, so a URL for a backend left out of the build
/// gets the "enable the feature" error, not a parse error.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum StoreUrl {
    /// `memory://`
    Memory(Common, MemorySettings),
    /// `sqlite://PATH` or `sqlite:PATH`.
    SqliteFile(PathBuf, Common, SqliteSettings),
    /// `sqlite::memory:`
    SqliteMemory(Common, SqliteSettings),
    /// `postgres://...`, `postgresql://...` or a key=value string, read
    /// whole by `PostgresConfig::from_url` (which knows its parameters).
    Postgres(String),
    /// `redis://`, `rediss://`, `redis+cluster://` or `rediss+cluster://`,
    /// without the query, which held our parameters.
    Redis(String, Common, RedisSettings),
}

#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct RedisSettings {
    pub(crate) key_prefix: Option<String>,
    pub(crate) connect_timeout: Option<Duration>,
    pub(crate) command_timeout: Option<Duration>,
    pub(crate) sweep_piece: Option<usize>,
    pub(crate) max_batch: Option<usize>,
}

/// The parameters every backend takes.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Common {
    pub(crate) max_meta_bytes: Option<usize>,
    pub(crate) event_buffer: Option<usize>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct MemorySettings {
    pub(crate) shards: Option<usize>,
}

/// How a SQLite file is opened (`mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) enum SqliteMode {
    /// Create the file if it is missing (default).
    #[default]
    ReadWriteCreate,
    /// The file must exist.
    ReadWrite,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct SqliteSettings {
    pub(crate) mode: SqliteMode,
    pub(crate) busy_timeout: Option<Duration>,
    pub(crate) table_prefix: Option<String>,
    pub(crate) read_connections: Option<usize>,
    pub(crate) max_group: Option<usize>,
    pub(crate) checkpoint_pages: Option<u32>,
}

/// The query parameters of one URL, each taken at most once; what is left
/// at the end is unknown.
struct Params {
    scheme: &'static str,
    pairs: Vec<(String, String)>,
}

impl Params {
    fn new(scheme: &'static str, query: &str) -> Result<Self> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            if pairs.iter().any(|(k, _)| *k == key) {
                return Err(Error::invalid(
                    "url",
                    format!("parameter {key:?} is given twice"),
                ));
            }
            pairs.push((key.into_owned(), value.into_owned()));
        }
        Ok(Self { scheme, pairs })
    }

    fn take(&mut self, key: &str) -> Option<String> {
        let at = self.pairs.iter().position(|(k, _)| k == key)?;
        Some(self.pairs.remove(at).1)
    }

    fn number<T>(&mut self, key: &'static str, min: T) -> Result<Option<T>>
    where
        T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
    {
        let Some(text) = self.take(key) else {
            return Ok(None);
        };
        match text.parse::<T>() {
            Ok(value) if value >= min => Ok(Some(value)),
            _ => Err(Error::invalid(
                key,
                format!("{text:?} is not a whole number of at least {min} (URL parameter {key})"),
            )),
        }
    }

    fn duration(&mut self, key: &'static str) -> Result<Option<Duration>> {
        let Some(text) = self.take(key) else {
            return Ok(None);
        };
        humantime::parse_duration(&text).map(Some).map_err(|error| {
            Error::invalid(
                key,
                format!("{text:?} is not a duration such as 5s or 250ms: {error}"),
            )
        })
    }

    fn common(&mut self) -> Result<Common> {
        Ok(Common {
            max_meta_bytes: self.number("max_meta_bytes", 2)?,
            event_buffer: self.number("event_buffer", 1)?,
        })
    }

    /// Refuses whatever was not taken, naming it.
    fn finish(self, known: &[&str]) -> Result<()> {
        match self.pairs.first() {
            None => Ok(()),
            Some((key, _)) => Err(Error::invalid(
                "url",
                format!(
                    "unknown parameter {key:?} for {}:// (known: {})",
                    self.scheme,
                    known.join(", ")
                ),
            )),
        }
    }
}

const COMMON: [&str; 2] = ["max_meta_bytes", "event_buffer"];

impl StoreUrl {
    /// Reads a store URL; errors name the field `url`, or the parameter
    /// whose value is wrong.
    pub(crate) fn parse(url: &str) -> Result<Self> {
        let url = url.trim();
        if let Some(rest) = url.strip_prefix("memory:") {
            let rest = rest.strip_prefix("//").unwrap_or(rest);
            let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
            if !path.is_empty() {
                return Err(Error::invalid("url", "memory:// takes no path"));
            }
            let mut params = Params::new("memory", query)?;
            let common = params.common()?;
            let settings = MemorySettings {
                shards: params.number("shards", 1)?,
            };
            params.finish(&[COMMON[0], COMMON[1], "shards"])?;
            return Ok(StoreUrl::Memory(common, settings));
        }
        if let Some(rest) = url.strip_prefix("sqlite:") {
            return Self::sqlite(rest);
        }
        if url.starts_with("postgres://")
            || url.starts_with("postgresql://")
            || (!url.contains("://") && url.contains('='))
        {
            return Ok(StoreUrl::Postgres(url.to_owned()));
        }
        let scheme = url.split(':').next().unwrap_or_default();
        if ["redis", "rediss", "redis+cluster", "rediss+cluster"].contains(&scheme) {
            return Self::redis(url);
        }
        Err(Error::invalid(
            "url",
            format!("unknown store scheme {scheme:?}; expected {URL_FORMS}"),
        ))
    }

    fn redis(url: &str) -> Result<Self> {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut params = Params::new("redis", query)?;
        let common = params.common()?;
        let settings = RedisSettings {
            key_prefix: params.take("key_prefix"),
            connect_timeout: params.duration("connect_timeout")?,
            command_timeout: params.duration("command_timeout")?,
            sweep_piece: params.number("sweep_piece", 1)?,
            max_batch: params.number("max_batch", 1)?,
        };
        params.finish(&[
            COMMON[0],
            COMMON[1],
            "key_prefix",
            "connect_timeout",
            "command_timeout",
            "sweep_piece",
            "max_batch",
        ])?;
        Ok(StoreUrl::Redis(base.to_owned(), common, settings))
    }

    fn sqlite(rest: &str) -> Result<Self> {
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut params = Params::new("sqlite", query)?;
        let common = params.common()?;
        let mode = match params.take("mode").as_deref() {
            None | Some("rwc") => SqliteMode::ReadWriteCreate,
            Some("rw") => SqliteMode::ReadWrite,
            Some("ro") => {
                return Err(Error::invalid(
                    "mode",
                    "mode=ro is not supported: a presence store writes (joins, heartbeats, \
                     sweeps); use mode=rw to require an existing file",
                ));
            }
            Some(other) => {
                return Err(Error::invalid(
                    "mode",
                    format!("{other:?} is not a mode: rwc (the default) or rw"),
                ));
            }
        };
        let settings = SqliteSettings {
            mode,
            busy_timeout: params.duration("busy_timeout")?,
            table_prefix: params.take("table_prefix"),
            read_connections: params.number("read_connections", 1)?,
            max_group: params.number("max_group", 1)?,
            checkpoint_pages: params.number("checkpoint_pages", 1)?,
        };
        params.finish(&[
            COMMON[0],
            COMMON[1],
            "mode",
            "busy_timeout",
            "table_prefix",
            "read_connections",
            "max_group",
            "checkpoint_pages",
        ])?;
        if location == ":memory:" {
            if settings.mode != SqliteMode::ReadWriteCreate {
                return Err(Error::invalid("mode", "sqlite::memory: has no file"));
            }
            return Ok(StoreUrl::SqliteMemory(common, settings));
        }
        let path = location.strip_prefix("//").unwrap_or(location);
        if path.is_empty() {
            return Err(Error::invalid(
                "url",
                "sqlite:// needs a file path (sqlite://presence.db) or sqlite::memory:",
            ));
        }
        let decoded = percent_encoding::percent_decode_str(path)
            .decode_utf8()
            .map_err(|_| Error::invalid("url", "the SQLite path is not UTF-8 once decoded"))?;
        Ok(StoreUrl::SqliteFile(
            PathBuf::from(decoded.as_ref()),
            common,
            settings,
        ))
    }

    /// The Cargo feature of `presence-kit` that builds this URL's backend.
    pub(crate) fn feature(&self) -> &'static str {
        match self {
            StoreUrl::Memory(..) => "memory",
            StoreUrl::SqliteFile(..) | StoreUrl::SqliteMemory(..) => "sqlite",
            StoreUrl::Postgres(..) => "postgres",
            StoreUrl::Redis(..) => "redis",
        }
    }
}

/// A store URL or connection string with every secret replaced by `***`,
/// for printing: the password of `scheme://user:password@host`, and the
/// values of `password` / `sslpassword` parameters, in URLs and in
/// key=value strings.
///
/// ```
/// assert_eq!(
///     presence::redact("postgres://app:s3cret@db/main?schema=p"),
///     "postgres://app:***@db/main?schema=p"
/// );
/// assert_eq!(
///     presence::redact("host=db user=app password='a b'"),
///     "host=db user=app password=***"
/// );
/// ```
pub fn redact(url: &str) -> String {
    let url = url.trim();
    if url.contains("://") {
        return presence_core::redact_url(url);
    }
    if !url.contains('=') {
        return url.to_owned();
    }
    #[cfg(feature = "postgres")]
    {
        presence_postgres::redact(url)
    }
    #[cfg(not(feature = "postgres"))]
    {
        // A key=value string this build cannot read: mask it whole if it
        // may hold a secret.
        if url.contains("password") {
            presence_core::MASK.to_owned()
        } else {
            url.to_owned()
        }
    }
}

/// The error for a URL whose backend was left out of the build.
fn feature_off(url: &StoreUrl) -> Error {
    let feature = url.feature();
    Error::invalid(
        "url",
        format!(
            "the {feature} backend is not compiled in: enable the `{feature}` feature of the `presence-kit` crate"
        ),
    )
}

/// Opens the store a URL names, creating or upgrading its schema, with each
/// backend's defaults for what the URL does not say:
///
/// | URL | store | feature |
/// | --- | --- | --- |
/// | `memory://` | a new, empty in-process store | `memory` (default) |
/// | `sqlite://presence.db`, `sqlite:///var/lib/app/presence.db` | the SQLite file (created if missing) | `sqlite` |
/// | `sqlite::memory:` | a private in-memory SQLite database | `sqlite` |
/// | `postgres://user@host/db?schema=presence`, `host=db user=app schema=presence` | the Postgres schema (default `presence`) | `postgres` |
/// | `redis://host:6379/0`, `rediss://...` (TLS), `redis+cluster://h1:7000,h2:7000/` | the keys under `key_prefix` on one Redis or a Redis Cluster | `redis` |
///
/// Parameters, in the query (`?a=1&b=2`; percent-escapes are decoded, in
/// SQLite paths too) or, for key=value Postgres strings, as more pairs:
///
/// | backend | parameters |
/// | --- | --- |
/// | all | `max_meta_bytes`, `event_buffer` |
/// | `memory` | `shards` |
/// | `sqlite` | `mode` (`rwc`: create if missing, the default; `rw`: the file must exist), `busy_timeout` (`5s`), `table_prefix`, `read_connections`, `max_group`, `checkpoint_pages` |
/// | `redis` | `key_prefix` (default `presence:`), `connect_timeout`, `command_timeout` (`5s`), `sweep_piece`, `max_batch` |
/// | `postgres` | `schema`, `pool_size`, `sslmode` (`disable`, `prefer`, `require`, `verify-ca`, `verify-full`; the last three need the `tls` feature), `sslrootcert`, `migrate_on_open`, `sweep_chunk`, the timeouts (`connect_timeout`, `call_timeout`, `pool_wait_timeout`, ...; see [`PostgresConfig`](https://docs.rs/presence-postgres)), and the driver's own (`application_name`, ...) |
///
/// An unknown parameter is refused, naming it. [`connect_with`] takes the
/// common settings typed, with a clock.
///
/// # Errors
///
/// [`Error::InvalidInput`] naming `url` (or the parameter whose value is
/// wrong) for an unknown scheme, an unknown parameter, a bad value, or a
/// backend whose feature is off; nothing is opened or created.
/// [`Error::Backend`] when the store cannot be opened.
///
/// ```
/// # async fn run() -> presence::Result<()> {
/// let store = presence::connect("memory://?max_meta_bytes=1024").await?;
/// assert_eq!(store.max_meta_bytes(), 1024);
/// let err = presence::connect("memory://?max_meta_byte=1024").await.unwrap_err();
/// assert_eq!(err.invalid_field(), Some("url"));
/// assert!(err.to_string().contains("\"max_meta_byte\""));
/// # Ok(()) }
/// ```
pub async fn connect(url: &str) -> Result<Arc<dyn PresenceStore>> {
    connect_with(url, ConnectOptions::default()).await
}

/// [`connect`] with typed settings that apply to every backend (they win
/// over the URL's parameters).
pub async fn connect_with(url: &str, options: ConnectOptions) -> Result<Arc<dyn PresenceStore>> {
    let url = StoreUrl::parse(url)?;
    if options.max_meta_bytes.is_some_and(|n| n < 2) {
        return Err(Error::invalid(
            "max_meta_bytes",
            "must be at least 2 (the size of {})",
        ));
    }
    if options.event_buffer == Some(0) {
        return Err(Error::invalid("event_buffer", "must be at least 1"));
    }
    open(url, options).await
}

/// Creates or upgrades the schema of the store `url` names, without opening
/// the store: the step to run before app servers that open their store with
/// `migrate_on_open=false` (Postgres, under a role that may not create
/// anything). SQLite files are opened and closed (their schema is migrated
/// on open); a memory store has nothing to migrate. Safe when several
/// processes migrate at once.
///
/// # Errors
///
/// As [`connect`]; a schema newer than this code is refused.
pub async fn migrate(url: &str) -> Result<()> {
    match StoreUrl::parse(url)? {
        #[cfg(feature = "postgres")]
        StoreUrl::Postgres(url) => {
            let config = presence_postgres::PostgresConfig::from_url(&url)?;
            presence_postgres::PostgresStore::migrate(&config)
                .await
                .map(drop)
        }
        parsed => {
            let store = open(parsed, ConnectOptions::default()).await?;
            store.close().await
        }
    }
}

#[allow(unused_variables)]
async fn open(url: StoreUrl, options: ConnectOptions) -> Result<Arc<dyn PresenceStore>> {
    let common = |common: &Common| Common {
        max_meta_bytes: options.max_meta_bytes.or(common.max_meta_bytes),
        event_buffer: options.event_buffer.or(common.event_buffer),
    };
    match &url {
        #[cfg(feature = "memory")]
        StoreUrl::Memory(given, settings) => {
            let given = common(given);
            let mut config = presence_memory::MemoryConfig::default();
            if let Some(clock) = options.clock {
                config.clock = clock;
            }
            set(&mut config.max_meta_bytes, given.max_meta_bytes);
            set(&mut config.event_buffer, given.event_buffer);
            set(&mut config.shards, settings.shards);
            Ok(Arc::new(presence_memory::MemoryStore::with_config(config)))
        }
        #[cfg(feature = "sqlite")]
        StoreUrl::SqliteFile(path, given, settings) => {
            if settings.mode == SqliteMode::ReadWrite && !path.exists() {
                return Err(Error::backend(
                    "sqlite",
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("{}: no such file (mode=rw)", path.display()),
                    ),
                ));
            }
            let config = sqlite_config(
                presence_sqlite::SqliteConfig::file(path),
                &common(given),
                settings,
                options.clock,
            );
            Ok(Arc::new(presence_sqlite::SqliteStore::open(config).await?))
        }
        #[cfg(feature = "sqlite")]
        StoreUrl::SqliteMemory(given, settings) => {
            let config = sqlite_config(
                presence_sqlite::SqliteConfig::memory(),
                &common(given),
                settings,
                options.clock,
            );
            Ok(Arc::new(presence_sqlite::SqliteStore::open(config).await?))
        }
        #[cfg(feature = "postgres")]
        StoreUrl::Postgres(url) => {
            let mut config = presence_postgres::PostgresConfig::from_url(url)?;
            if let Some(clock) = options.clock {
                config.clock = clock;
            }
            set(&mut config.max_meta_bytes, options.max_meta_bytes);
            set(&mut config.event_buffer, options.event_buffer);
            Ok(Arc::new(
                presence_postgres::PostgresStore::connect(config).await?,
            ))
        }
        #[cfg(feature = "redis")]
        StoreUrl::Redis(url, given, settings) => {
            let given = common(given);
            let mut config = presence_redis::RedisConfig::new(url.clone());
            if let Some(clock) = options.clock {
                config.clock = clock;
            }
            set(&mut config.max_meta_bytes, given.max_meta_bytes);
            set(&mut config.event_buffer, given.event_buffer);
            set(&mut config.key_prefix, settings.key_prefix.clone());
            set(&mut config.connect_timeout, settings.connect_timeout);
            set(&mut config.command_timeout, settings.command_timeout);
            set(&mut config.sweep_piece, settings.sweep_piece);
            set(&mut config.max_batch, settings.max_batch);
            Ok(Arc::new(presence_redis::RedisStore::connect(config).await?))
        }
        #[allow(unreachable_patterns)]
        other => Err(feature_off(other)),
    }
}

/// Overwrites `field` with `value` when one was given.
#[allow(dead_code)]
fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *field = value;
    }
}

#[cfg(feature = "sqlite")]
fn sqlite_config(
    mut config: presence_sqlite::SqliteConfig,
    common: &Common,
    settings: &SqliteSettings,
    clock: Option<Arc<dyn Clock>>,
) -> presence_sqlite::SqliteConfig {
    if let Some(clock) = clock {
        config.clock = clock;
    }
    set(&mut config.max_meta_bytes, common.max_meta_bytes);
    set(&mut config.event_buffer, common.event_buffer);
    set(&mut config.busy_timeout, settings.busy_timeout);
    set(&mut config.table_prefix, settings.table_prefix.clone());
    set(&mut config.read_connections, settings.read_connections);
    set(&mut config.max_group, settings.max_group);
    set(&mut config.checkpoint_pages, settings.checkpoint_pages);
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> StoreUrl {
        StoreUrl::parse(url).unwrap()
    }

    fn sqlite_file(path: &str) -> StoreUrl {
        StoreUrl::SqliteFile(path.into(), Common::default(), SqliteSettings::default())
    }

    #[test]
    fn reads_every_form() {
        let memory = StoreUrl::Memory(Common::default(), MemorySettings::default());
        assert_eq!(parse("memory://"), memory);
        assert_eq!(parse("memory:"), memory);
        assert_eq!(
            parse("sqlite::memory:"),
            StoreUrl::SqliteMemory(Common::default(), SqliteSettings::default())
        );
        assert_eq!(parse("sqlite://presence.db"), sqlite_file("presence.db"));
        assert_eq!(
            parse("sqlite:///var/lib/presence.db"),
            sqlite_file("/var/lib/presence.db")
        );
        assert_eq!(parse("sqlite:data/p.db"), sqlite_file("data/p.db"));
        assert_eq!(
            parse("redis+cluster://:pw@h1:7000,h2:7000/?key_prefix=app:&max_meta_bytes=512"),
            StoreUrl::Redis(
                "redis+cluster://:pw@h1:7000,h2:7000/".into(),
                Common {
                    max_meta_bytes: Some(512),
                    event_buffer: None
                },
                RedisSettings {
                    key_prefix: Some("app:".into()),
                    ..RedisSettings::default()
                }
            )
        );
        for url in [
            "postgres://u@h/db",
            "postgresql://u@h/db?sslmode=disable&schema=rooms&connect_timeout=5",
            "host=db user=app schema=rooms",
        ] {
            assert_eq!(parse(url), StoreUrl::Postgres(url.into()));
        }
    }

    #[test]
    fn the_query_is_parameters_not_part_of_the_path() {
        // Used to create a file named `p.db?mode=rw`.
        let StoreUrl::SqliteFile(path, common, settings) =
            parse("sqlite:///data/p.db?mode=rw&max_meta_bytes=1000&busy_timeout=250ms")
        else {
            panic!()
        };
        assert_eq!(path, PathBuf::from("/data/p.db"));
        assert_eq!(common.max_meta_bytes, Some(1000));
        assert_eq!(settings.mode, SqliteMode::ReadWrite);
        assert_eq!(settings.busy_timeout, Some(Duration::from_millis(250)));
        assert_eq!(
            parse("sqlite:///data/my%20rooms%3F.db"),
            sqlite_file("/data/my rooms?.db")
        );
        let StoreUrl::Memory(common, settings) = parse("memory://?shards=4&event_buffer=16") else {
            panic!()
        };
        assert_eq!((settings.shards, common.event_buffer), (Some(4), Some(16)));
    }

    /// Postgres URLs and key=value strings are read by the backend, with
    /// the same rules: parameters named, values checked, before connecting.
    #[cfg(feature = "postgres")]
    #[tokio::test]
    async fn postgres_parameters_are_checked_before_connecting() {
        for (url, field) in [
            ("postgres://u@h/db?pool_size=none", "pool_size"),
            ("postgres://u@h/db?colour=blue", "url"),
            ("host=db user=app max_meta_bytes=zero", "max_meta_bytes"),
            ("host=db password='open", "url"),
        ] {
            let err = connect(url).await.unwrap_err();
            assert_eq!(err.invalid_field(), Some(field), "{url}: {err}");
        }
        let err = connect("postgres://app:s3cret@[bad/db").await.unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }

    #[test]
    fn refuses_bad_urls_naming_the_field() {
        for (url, field) in [
            ("gopher://localhost", "url"),
            ("redis://localhost?colour=blue", "url"),
            ("redis://localhost?command_timeout=soon", "command_timeout"),
            ("", "url"),
            ("sqlite://", "url"),
            ("sqlite:", "url"),
            ("memory://x", "url"),
            ("memory://?colour=blue", "url"),
            ("sqlite://p.db?mode=ro", "mode"),
            ("sqlite://p.db?mode=fast", "mode"),
            ("sqlite://p.db?busy_timeout=soon", "busy_timeout"),
            ("sqlite://p.db?max_meta_bytes=-1", "max_meta_bytes"),
            ("sqlite://p.db?read_connections=0", "read_connections"),
            ("memory://?shards=0", "shards"),
            ("memory://?event_buffer=1&event_buffer=2", "url"),
        ] {
            let err = StoreUrl::parse(url).unwrap_err();
            assert_eq!(err.invalid_field(), Some(field), "{url}: {err}");
        }
        let err = StoreUrl::parse("gopher://localhost").unwrap_err();
        assert!(err.to_string().contains("\"gopher\""), "{err}");
        let err = StoreUrl::parse("sqlite://p.db?mod=rw").unwrap_err();
        assert!(err.to_string().contains("\"mod\""), "{err}");
    }

    #[test]
    fn secrets_are_never_printed() {
        // Without the Postgres backend a key=value string cannot be read,
        // so it is masked whole.
        let key_value = if cfg!(feature = "postgres") {
            "host=db password=*** sslpassword=***"
        } else {
            "***"
        };
        for (url, redacted) in [
            (
                "postgres://app:s3cret@db:5432/main?schema=p",
                "postgres://app:***@db:5432/main?schema=p",
            ),
            ("postgres://app@db/main", "postgres://app@db/main"),
            (
                "postgres://app@db/main?password=s3cret&sslmode=require",
                "postgres://app@db/main?password=***&sslmode=require",
            ),
            ("host=db password=s3cret sslpassword='x y'", key_value),
            ("sqlite://presence.db", "sqlite://presence.db"),
            ("sqlite::memory:", "sqlite::memory:"),
        ] {
            assert_eq!(redact(url), redacted);
        }
    }

    #[test]
    fn names_the_feature_that_is_off() {
        let err = feature_off(&parse("postgres://u@h/db"));
        assert_eq!(err.invalid_field(), Some("url"));
        assert!(
            err.to_string().contains("enable the `postgres` feature"),
            "{err}"
        );
    }

    #[cfg(feature = "memory")]
    #[tokio::test]
    async fn typed_options_win_over_the_url() {
        let options = ConnectOptions {
            max_meta_bytes: Some(300),
            ..ConnectOptions::default()
        };
        let store = connect_with("memory://?max_meta_bytes=100", options)
            .await
            .unwrap();
        assert_eq!(store.max_meta_bytes(), 300);
        let err = connect_with(
            "memory://",
            ConnectOptions {
                event_buffer: Some(0),
                ..ConnectOptions::default()
            },
        )
        .await
        .unwrap_err();
        assert_eq!(err.invalid_field(), Some("event_buffer"));
    }

    /// Run with `cargo test -p presence-kit --no-default-features --features memory`
    /// (as `.ci/run` does): the other backends are then really absent.
    #[cfg(not(feature = "sqlite"))]
    #[tokio::test]
    async fn connect_refuses_a_backend_that_is_not_compiled_in() {
        let err = connect("sqlite://never-created.db").await.unwrap_err();
        assert_eq!(err.invalid_field(), Some("url"));
        assert!(err.to_string().contains("`sqlite` feature"), "{err}");
        assert!(!std::path::Path::new("never-created.db").exists());
    }

    #[cfg(not(feature = "postgres"))]
    #[tokio::test]
    async fn connect_refuses_postgres_when_not_compiled_in() {
        let err = connect("postgres://u@localhost/db").await.unwrap_err();
        assert!(err.to_string().contains("`postgres` feature"), "{err}");
    }
}
