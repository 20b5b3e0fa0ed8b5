//! How the store opens connections: one connector, plaintext, the built-in
//! rustls one (feature `tls`) or the app's own, for both the pool and the
//! event listener.

use std::sync::Arc;

use deadpool_postgres::{Manager, ManagerConfig};
use futures::StreamExt;
use futures::future::BoxFuture;
#[cfg(not(feature = "tls"))]
use presence_core::Error;
use presence_core::Result;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use crate::config::{PostgresConfig, SslMode};

/// A live listener connection: the client, the notifications its
/// connection receives (ending with the error that ended it, if any), and
/// the task that drives it.
pub(crate) struct Session {
    pub(crate) client: Client,
    pub(crate) notes: mpsc::UnboundedReceiver<Result<String, tokio_postgres::Error>>,
    /// Dropping the session stops its connection.
    _driver: AbortOnDrop,
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

type Connect = dyn Fn(tokio_postgres::Config) -> BoxFuture<'static, Result<Session, tokio_postgres::Error>>
    + Send
    + Sync;
type MakeManager = dyn Fn(tokio_postgres::Config, ManagerConfig) -> Manager + Send + Sync;

/// A TLS connector with its type erased.
#[derive(Clone)]
pub(crate) struct Connector {
    connect: Arc<Connect>,
    manager: Arc<MakeManager>,
}

impl Connector {
    /// Wraps any tokio-postgres connector.
    pub(crate) fn new<T: crate::StoreTls>(tls: T) -> Self {
        let for_pool = tls.clone();
        Self {
            connect: Arc::new(move |pg: tokio_postgres::Config| {
                let tls = tls.clone();
                Box::pin(async move {
                    let (client, mut connection) = pg.connect(tls).await?;
                    let (sender, notes) = mpsc::unbounded_channel();
                    let driver = tokio::spawn(async move {
                        let mut messages =
                            futures::stream::poll_fn(move |cx| connection.poll_message(cx));
                        while let Some(message) = messages.next().await {
                            match message {
                                Ok(AsyncMessage::Notification(note)) => {
                                    if sender.send(Ok(note.payload().to_owned())).is_err() {
                                        return;
                                    }
                                }
                                Ok(_) => {}
                                Err(error) => {
                                    let _ = sender.send(Err(error));
                                    return;
                                }
                            }
                        }
                    });
                    Ok(Session {
                        client,
                        notes,
                        _driver: AbortOnDrop(driver),
                    })
                })
            }),
            manager: Arc::new(move |pg, manager_config| {
                Manager::from_config(pg, for_pool.clone(), manager_config)
            }),
        }
    }

    /// The connector `config.sslmode` asks for.
    pub(crate) fn from_config(config: &PostgresConfig) -> Result<Self> {
        match config.sslmode {
            SslMode::Disable => Ok(Self::new(NoTls)),
            #[cfg(not(feature = "tls"))]
            SslMode::Prefer => Ok(Self::new(NoTls)),
            #[cfg(not(feature = "tls"))]
            mode => Err(Error::invalid(
                "sslmode",
                format!(
                    "{} needs presence-postgres's `tls` feature (or a connector of your own: \
                     PostgresStore::connect_with_tls)",
                    mode.as_str()
                ),
            )),
            #[cfg(feature = "tls")]
            _ => crate::tls::connector(config).map(Self::new),
        }
    }

    pub(crate) async fn connect(
        &self,
        pg: tokio_postgres::Config,
    ) -> Result<Session, tokio_postgres::Error> {
        (self.connect)(pg).await
    }

    pub(crate) fn manager(
        &self,
        pg: tokio_postgres::Config,
        manager_config: ManagerConfig,
    ) -> Manager {
        (self.manager)(pg, manager_config)
    }
}

/// tokio-postgres's own mode for ours: it negotiates, the connector verifies.
pub(crate) fn driver_ssl_mode(mode: SslMode) -> tokio_postgres::config::SslMode {
    use tokio_postgres::config::SslMode as Driver;
    match mode {
        SslMode::Disable => Driver::Disable,
        SslMode::Prefer => Driver::Prefer,
        _ => Driver::Require,
    }
}
