//! Opening a store from a URL.

use std::sync::Arc;

use presence_core::{Error, PresenceStore, Result};

/// The store URL forms [`connect`] understands, for error messages.
const URL_FORMS: &str =
    "memory://, sqlite://PATH, sqlite::memory: or postgres://USER@HOST/DB[?schema=NAME]";

/// Which backend a URL names, and what it says about the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum StoreUrl {
    /// `memory://`
    Memory,
    /// `sqlite://PATH` or `sqlite:PATH`.
    SqliteFile(String),
    /// `sqlite::memory:`
    SqliteMemory,
    /// `postgres://...` or `postgresql://...`, with the `schema` parameter
    /// taken out of the query.
    Postgres {
        /// The URL handed to the driver.
        url: String,
        /// The `schema` query parameter, if given.
        schema: Option<String>,
    },
}

impl StoreUrl {
    /// Reads a store URL; the error names the field `url`.
    pub(crate) fn parse(url: &str) -> Result<Self> {
        let url = url.trim();
        if let Some(rest) = url.strip_prefix("memory:") {
            return match rest.trim_start_matches('/') {
                "" => Ok(StoreUrl::Memory),
                _ => Err(Error::invalid("url", "memory:// takes no path")),
            };
        }
        if url == "sqlite::memory:" {
            return Ok(StoreUrl::SqliteMemory);
        }
        if let Some(rest) = url.strip_prefix("sqlite:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(Error::invalid(
                    "url",
                    "sqlite:// needs a file path (sqlite://presence.db) or sqlite::memory:",
                ));
            }
            return Ok(StoreUrl::SqliteFile(path.to_owned()));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(split_schema(url));
        }
        let scheme = url.split(':').next().unwrap_or_default();
        Err(Error::invalid(
            "url",
            format!("unknown store scheme {scheme:?}; expected {URL_FORMS}"),
        ))
    }

    /// The Cargo feature of `presence` that builds this URL's backend.
    pub(crate) fn feature(&self) -> &'static str {
        match self {
            StoreUrl::Memory => "memory",
            StoreUrl::SqliteFile(_) | StoreUrl::SqliteMemory => "sqlite",
            StoreUrl::Postgres { .. } => "postgres",
        }
    }
}

/// Takes `schema=NAME` out of a Postgres URL's query: it configures the
/// store, and the driver would refuse it as an unknown connection option.
fn split_schema(url: &str) -> StoreUrl {
    let Some((base, query)) = url.split_once('?') else {
        return StoreUrl::Postgres {
            url: url.to_owned(),
            schema: None,
        };
    };
    let mut schema = None;
    let rest: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.strip_prefix("schema=") {
            Some(name) => {
                schema = Some(name.to_owned());
                false
            }
            None => !pair.is_empty(),
        })
        .collect();
    let url = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    StoreUrl::Postgres { url, schema }
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

/// Opens the store a URL names, creating or upgrading its schema:
///
/// | URL | store | feature |
/// | --- | --- | --- |
/// | `memory://` | a new, empty in-process store | `memory` (default) |
/// | `sqlite://presence.db`, `sqlite:///var/lib/app/presence.db` | the SQLite file (created if missing) | `sqlite` |
/// | `sqlite::memory:` | a private in-memory SQLite database | `sqlite` |
/// | `postgres://user@host/db?schema=presence` | the Postgres schema (default `presence`) | `postgres` |
///
/// Every store gets its backend's defaults (system clock, 4096-byte meta
/// limit); build a backend's config yourself for anything else.
///
/// # Errors
///
/// [`Error::InvalidInput`] naming the field `url` for an unknown scheme or a
/// backend whose feature is off (nothing is opened); [`Error::Backend`] when
/// the store cannot be opened.
///
/// ```
/// # async fn run() -> presence::Result<()> {
/// let store = presence::connect("memory://").await?;
/// let err = presence::connect("redis://localhost").await.unwrap_err();
/// assert_eq!(err.invalid_field(), Some("url"));
/// # Ok(()) }
/// ```
pub async fn connect(url: &str) -> Result<Arc<dyn PresenceStore>> {
    let url = StoreUrl::parse(url)?;
    match url {
        #[cfg(feature = "memory")]
        StoreUrl::Memory => Ok(Arc::new(presence_memory::MemoryStore::new())),
        #[cfg(feature = "sqlite")]
        StoreUrl::SqliteFile(path) => {
            let config = presence_sqlite::SqliteConfig::file(path);
            Ok(Arc::new(presence_sqlite::SqliteStore::open(config).await?))
        }
        #[cfg(feature = "sqlite")]
        StoreUrl::SqliteMemory => {
            let config = presence_sqlite::SqliteConfig::memory();
            Ok(Arc::new(presence_sqlite::SqliteStore::open(config).await?))
        }
        #[cfg(feature = "postgres")]
        StoreUrl::Postgres { url, schema } => {
            let mut config = presence_postgres::PostgresConfig::new(url);
            if let Some(schema) = schema {
                config.schema = schema;
            }
            Ok(Arc::new(
                presence_postgres::PostgresStore::connect(config).await?,
            ))
        }
        #[allow(unreachable_patterns)]
        other => Err(feature_off(&other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> StoreUrl {
        StoreUrl::parse(url).unwrap()
    }

    #[test]
    fn reads_every_form() {
        assert_eq!(parse("memory://"), StoreUrl::Memory);
        assert_eq!(parse("memory:"), StoreUrl::Memory);
        assert_eq!(parse("sqlite::memory:"), StoreUrl::SqliteMemory);
        assert_eq!(
            parse("sqlite://presence.db"),
            StoreUrl::SqliteFile("presence.db".into())
        );
        assert_eq!(
            parse("sqlite:///var/lib/presence.db"),
            StoreUrl::SqliteFile("/var/lib/presence.db".into())
        );
        assert_eq!(
            parse("sqlite:data/p.db"),
            StoreUrl::SqliteFile("data/p.db".into())
        );
        assert_eq!(
            parse("postgres://u@h/db"),
            StoreUrl::Postgres {
                url: "postgres://u@h/db".into(),
                schema: None
            }
        );
        assert_eq!(
            parse("postgresql://u@h/db?sslmode=disable&schema=rooms&connect_timeout=5"),
            StoreUrl::Postgres {
                url: "postgresql://u@h/db?sslmode=disable&connect_timeout=5".into(),
                schema: Some("rooms".into())
            }
        );
        assert_eq!(
            parse("postgres://u@h/db?schema=rooms"),
            StoreUrl::Postgres {
                url: "postgres://u@h/db".into(),
                schema: Some("rooms".into())
            }
        );
    }

    #[test]
    fn refuses_bad_urls_naming_the_field() {
        for url in [
            "redis://localhost",
            "",
            "sqlite://",
            "sqlite:",
            "memory://x",
        ] {
            let err = StoreUrl::parse(url).unwrap_err();
            assert_eq!(err.invalid_field(), Some("url"), "{url}: {err}");
        }
        let err = StoreUrl::parse("redis://localhost").unwrap_err();
        assert!(err.to_string().contains("\"redis\""), "{err}");
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

    /// Run with `cargo test -p presence --no-default-features --features memory`
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
