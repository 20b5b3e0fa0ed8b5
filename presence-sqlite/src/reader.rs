//! The readers: a few threads of the store's own, each owning a read-only
//! connection, taking queries from one bounded queue. WAL lets them read
//! while the writer writes; the async API only sends them work, so no read
//! ever runs on (or needs) the caller's runtime.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use presence_core::{Error, Result, metrics};
use rusqlite::{Connection, OpenFlags};
use tokio::sync::{mpsc, oneshot};

use crate::error::{BACKEND, SqliteError, closed, db};
use crate::sql::Sql;
use crate::thread::Worker;

/// A query for a reader, its result type erased (it answers its caller).
type Query = Box<dyn FnOnce(&Connection, &Sql) + Send>;

/// Queries waiting per reader thread before callers wait to queue more.
const QUEUED_PER_READER: usize = 64;

/// The handle callers use to reach the reader threads.
#[derive(Debug)]
pub(crate) struct Readers {
    /// `None` once the store is stopping.
    queries: RwLock<Option<mpsc::Sender<(Instant, Query)>>>,
    stopping: AtomicBool,
}

impl Readers {
    /// Starts `count` reader threads on the database file at `path`, each
    /// opening its own read-only connection; returns once all are ready,
    /// with their threads (the writer joins them when it stops).
    pub(crate) async fn start(
        path: &Path,
        count: usize,
        busy_timeout: Duration,
        sql: Arc<Sql>,
    ) -> Result<(Self, Vec<Worker>)> {
        let (queries, receiver) = mpsc::channel(count.max(1) * QUEUED_PER_READER);
        let receiver = Arc::new(Mutex::new(receiver));
        let mut workers = Vec::with_capacity(count);
        let mut readies = Vec::with_capacity(count);
        for _ in 0..count.max(1) {
            let (ready, opened) = oneshot::channel();
            let (path, receiver, sql) = (path.to_owned(), receiver.clone(), sql.clone());
            let spawned = Worker::spawn("reader", move || {
                let conn = match open_read_only(&path, busy_timeout) {
                    Ok(conn) => conn,
                    Err(error) => {
                        let _ = ready.send(Err(error));
                        return;
                    }
                };
                let _ = ready.send(Ok(()));
                serve(&conn, &sql, &receiver);
                if let Err((_, error)) = conn.close() {
                    tracing::warn!(%error, "presence-sqlite: closing a read connection failed");
                }
            });
            match spawned {
                Ok(worker) => {
                    workers.push(worker);
                    readies.push(opened);
                }
                Err(error) => {
                    drop(queries);
                    join_all(workers).await;
                    return Err(error.into());
                }
            }
        }
        let readers = Self {
            queries: RwLock::new(Some(queries)),
            stopping: AtomicBool::new(false),
        };
        for opened in readies {
            let failed = match opened.await {
                Ok(Ok(())) => None,
                Ok(Err(error)) => Some(error),
                Err(_) => Some(SqliteError::ThreadGone("reader").into()),
            };
            if let Some(error) = failed {
                readers.stop();
                join_all(workers).await;
                return Err(error);
            }
        }
        Ok((readers, workers))
    }

    /// Runs `query` on the next free reader.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        query: impl FnOnce(&Connection, &Sql) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let queries = self
            .queries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(closed)?;
        let (reply, result) = oneshot::channel();
        let job: Query = Box::new(move |conn, sql| {
            // A caller that stopped waiting is simply not answered.
            let _ = reply.send(query(conn, sql));
        });
        queries
            .send((Instant::now(), job))
            .await
            .map_err(|_| self.gone())?;
        drop(queries);
        result.await.map_err(|_| self.gone())?
    }

    fn gone(&self) -> Error {
        if self.stopping.load(Ordering::Acquire) {
            closed()
        } else {
            SqliteError::ThreadGone("reader").into()
        }
    }

    /// Takes no more queries; the threads answer the ones queued, then stop.
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.queries
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }
}

async fn join_all(workers: Vec<Worker>) {
    for worker in workers {
        worker.join().await;
    }
}

fn open_read_only(path: &Path, busy_timeout: Duration) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags).map_err(db)?;
    conn.busy_timeout(busy_timeout).map_err(db)?;
    Ok(conn)
}

/// Answers queries until the queue is closed and empty. The readers share
/// one queue: whoever holds the lock waits for the next query.
fn serve(conn: &Connection, sql: &Sql, receiver: &Mutex<mpsc::Receiver<(Instant, Query)>>) {
    loop {
        let next = receiver
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .blocking_recv();
        let Some((queued, query)) = next else {
            return;
        };
        metrics::pool_wait(BACKEND, queued.elapsed());
        query(conn, sql);
    }
}
