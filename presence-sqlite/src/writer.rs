//! The one writer: a thread that owns the write connection and commits every
//! call waiting for it as one transaction (group commit).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Instant;

use presence_core::{Error, Event, Result, SharedError, TopicBroadcast, metrics};
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use crate::checkpoint::{self, Checkpointer};
use crate::error::{BACKEND, SqliteError, closed};
use crate::sql::Sql;
use crate::thread::Worker;

/// Work for the writer: runs inside the group's transaction.
type Work<T> = Box<dyn FnOnce(&Connection, &Sql) -> Result<(T, Vec<Event>)> + Send>;

/// A call waiting for the writer, its result type erased.
trait Job: Send {
    /// Runs the work and holds its result until the group commits.
    fn run(self: Box<Self>, conn: &Connection, sql: &Sql) -> Staged;
    /// Fails the call without running it.
    fn fail(self: Box<Self>, error: Error);
}

struct Call<T> {
    work: Work<T>,
    reply: oneshot::Sender<Result<T>>,
}

/// Sends a caller its result, given the group's failure if there was one.
type Finish = Box<dyn FnOnce(Option<&SharedError>) + Send>;

/// A job's outcome, held until the commit decides it.
struct Staged {
    ok: bool,
    events: Vec<Event>,
    finish: Finish,
}

impl<T: Send + 'static> Job for Call<T> {
    fn run(self: Box<Self>, conn: &Connection, sql: &Sql) -> Staged {
        let reply = self.reply;
        match (self.work)(conn, sql) {
            Ok((value, events)) => Staged {
                ok: true,
                events,
                finish: Box::new(move |failed| {
                    let result = match failed {
                        None => Ok(value),
                        Some(shared) => Err(shared.error()),
                    };
                    // A caller that stopped waiting (a cancelled future, a
                    // runtime shut down) is simply not answered.
                    let _ = reply.send(result);
                }),
            },
            Err(error) => Staged {
                ok: false,
                events: Vec::new(),
                finish: Box::new(move |_| {
                    let _ = reply.send(Err(error));
                }),
            },
        }
    }

    fn fail(self: Box<Self>, error: Error) {
        let _ = self.reply.send(Err(error));
    }
}

/// What the writer has done since the store was opened.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Calls the writer ran (committed or not).
    pub calls: u64,
    /// Transactions it committed; with group commit, fewer than `calls`
    /// whenever calls arrive together.
    pub commits: u64,
    /// Checkpoints run beside the writer, on the checkpointer's thread
    /// (0 without `background_checkpoints`).
    pub background_checkpoints: u64,
    /// Checkpoints the writer ran itself between two transactions to let
    /// the WAL start over once it held `checkpoint_pages` pages (0 without
    /// `background_checkpoints`: SQLite's own are not counted).
    pub seals: u64,
}

#[derive(Debug, Default)]
struct Counters {
    calls: AtomicU64,
    commits: AtomicU64,
}

/// What the writer thread opens before it takes calls: the write connection
/// (schema migrated) and, for files, the checkpointer beside it.
pub(crate) type Open = Box<dyn FnOnce() -> Result<(Connection, Option<Checkpointer>)> + Send>;

/// How the writer thread is set up.
pub(crate) struct WriterSetup {
    pub(crate) open: Open,
    pub(crate) sql: Arc<Sql>,
    pub(crate) channels: TopicBroadcast,
    pub(crate) max_group: usize,
    /// Threads the writer joins when it stops, before it closes its
    /// connection (the reader threads): the write connection closes last,
    /// so SQLite folds the WAL into the file and removes it.
    pub(crate) before_closing: Arc<Mutex<Vec<Worker>>>,
}

/// The handle callers use to reach the writer thread.
#[derive(Debug)]
pub(crate) struct Writer {
    /// `None` once the store is stopping: no call is taken any more.
    jobs: RwLock<Option<mpsc::Sender<Box<dyn Job>>>>,
    stopping: AtomicBool,
    counters: Arc<Counters>,
    checkpoints: Option<Arc<checkpoint::Shared>>,
    /// Held by a `close` while it waits, so a second `close` waits too.
    thread: tokio::sync::Mutex<Option<Worker>>,
}

impl Writer {
    /// Starts the writer thread, which opens the database; returns once it
    /// is ready to take calls, or with the reason it could not open.
    pub(crate) async fn start(setup: WriterSetup) -> Result<Self> {
        let (jobs, receiver) = mpsc::channel(setup.max_group.max(1) * 4);
        let counters = Arc::new(Counters::default());
        let thread_counters = counters.clone();
        let (ready, opened) = oneshot::channel();
        let worker = Worker::spawn("writer", move || {
            let (conn, checkpointer) = match (setup.open)() {
                Ok(opened) => opened,
                Err(error) => {
                    let _ = ready.send(Err(error));
                    return;
                }
            };
            let _ = ready.send(Ok(checkpointer.as_ref().map(Checkpointer::shared)));
            Loop {
                conn: &conn,
                sql: &setup.sql,
                channels: &setup.channels,
                counters: &thread_counters,
                checkpointer: checkpointer.as_ref(),
                max_group: setup.max_group.max(1),
            }
            .run(receiver);
            // Stop in order: the checkpointer (its connection), the readers
            // (theirs), then this connection, the last; then end the event
            // streams, after every committed event was queued.
            drop(checkpointer);
            let readers = std::mem::take(
                &mut *setup
                    .before_closing
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner),
            );
            readers.into_iter().for_each(Worker::join_blocking);
            if let Err((_, error)) = conn.close() {
                tracing::warn!(error = %error, "presence-sqlite: closing the write connection failed");
            }
            setup.channels.close();
            tracing::debug!("presence-sqlite writer stopped");
        })?;
        let checkpoints = match opened.await {
            Ok(Ok(checkpoints)) => checkpoints,
            Ok(Err(error)) => {
                worker.join().await;
                return Err(error);
            }
            Err(_) => {
                worker.join().await;
                return Err(SqliteError::ThreadGone("writer").into());
            }
        };
        Ok(Self {
            jobs: RwLock::new(Some(jobs)),
            stopping: AtomicBool::new(false),
            counters,
            checkpoints,
            thread: tokio::sync::Mutex::new(Some(worker)),
        })
    }

    pub(crate) fn stats(&self) -> WriterStats {
        let (background_checkpoints, seals) = self
            .checkpoints
            .as_ref()
            .map_or((0, 0), |shared| shared.counts());
        WriterStats {
            calls: self.counters.calls.load(Ordering::Relaxed),
            commits: self.counters.commits.load(Ordering::Relaxed),
            background_checkpoints,
            seals,
        }
    }

    /// Runs `work` in the writer's next transaction; its result and events
    /// are released only once that transaction commits.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection, &Sql) -> Result<(T, Vec<Event>)> + Send + 'static,
    ) -> Result<T> {
        let jobs = self
            .jobs
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(closed)?;
        let (reply, result) = oneshot::channel();
        let call: Box<dyn Job> = Box::new(Call {
            work: Box::new(work),
            reply,
        });
        jobs.send(call).await.map_err(|_| self.gone())?;
        drop(jobs);
        result.await.map_err(|_| self.gone())?
    }

    fn gone(&self) -> Error {
        if self.stopping.load(Ordering::Acquire) {
            closed()
        } else {
            SqliteError::ThreadGone("writer").into()
        }
    }

    /// Takes no more calls; the thread commits and answers the calls
    /// already sent, then stops by itself.
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.jobs
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }

    /// Waits for the thread, once [`stop`](Self::stop)ped: it has then
    /// answered every call, joined the readers and the checkpointer, closed
    /// its connection and ended the event streams.
    pub(crate) async fn join(&self) {
        let mut thread = self.thread.lock().await;
        if let Some(worker) = thread.take() {
            worker.join().await;
        }
    }
}

/// The writer thread's loop and what it works with.
struct Loop<'a> {
    conn: &'a Connection,
    sql: &'a Sql,
    channels: &'a TopicBroadcast,
    counters: &'a Counters,
    checkpointer: Option<&'a Checkpointer>,
    max_group: usize,
}

impl Loop<'_> {
    /// Commits groups until every sender is gone and the queue is empty.
    fn run(&self, mut receiver: mpsc::Receiver<Box<dyn Job>>) {
        while let Some(first) = receiver.blocking_recv() {
            let mut group = vec![first];
            while group.len() < self.max_group {
                match receiver.try_recv() {
                    Ok(job) => group.push(job),
                    Err(_) => break,
                }
            }
            let calls = group.len();
            self.counters
                .calls
                .fetch_add(calls as u64, Ordering::Relaxed);
            let start = Instant::now();
            if let Some(events) = self.commit_group(group) {
                let took = start.elapsed();
                self.counters.commits.fetch_add(1, Ordering::Relaxed);
                metrics::batch(BACKEND, "commit", calls);
                metrics::commit(BACKEND, took);
                // A commit that changed nobody's presence is heartbeats (or
                // calls that changed nothing): one per heartbeat on a quiet
                // store, so below debug.
                if events > 0 {
                    tracing::debug!(calls, events, ?took, "presence-sqlite commit");
                } else {
                    tracing::trace!(calls, ?took, "presence-sqlite commit");
                }
                if let Some(checkpointer) = self.checkpointer {
                    checkpointer.committed(self.conn);
                }
            }
        }
    }

    /// One transaction for the whole group; each job in a savepoint of its
    /// own, so a failing job is rolled back alone and fails only its caller.
    /// Results and events are released only after COMMIT; if anything about
    /// the transaction itself fails, every caller of the group gets the same
    /// error and nothing is applied. Returns how many events the group
    /// emitted if it committed.
    fn commit_group(&self, group: Vec<Box<dyn Job>>) -> Option<usize> {
        let conn = self.conn;
        let calls = group.len();
        let mut jobs = group.into_iter();
        if let Err(error) = conn.execute_batch("BEGIN IMMEDIATE") {
            abort(conn, calls, Vec::new(), jobs, error);
            return None;
        }
        let mut staged = Vec::with_capacity(jobs.len());
        while let Some(job) = jobs.next() {
            if let Err(error) = execute_cached(conn, "SAVEPOINT call") {
                abort(conn, calls, staged, std::iter::once(job).chain(jobs), error);
                return None;
            }
            let done = job.run(conn, self.sql);
            let ended = if done.ok {
                execute_cached(conn, "RELEASE call")
            } else {
                execute_cached(conn, "ROLLBACK TO call")
                    .and_then(|()| execute_cached(conn, "RELEASE call"))
            };
            staged.push(done);
            if let Err(error) = ended {
                abort(conn, calls, staged, jobs, error);
                return None;
            }
        }
        if let Err(error) = conn.execute_batch("COMMIT") {
            abort(conn, calls, staged, jobs, error);
            return None;
        }
        let mut events = 0;
        for done in staged {
            events += done.events.len();
            self.channels.send_all(done.events);
            (done.finish)(None);
        }
        Some(events)
    }
}

/// Runs a parameterless statement kept prepared (savepoints run per call).
fn execute_cached(conn: &Connection, statement: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(statement)?.execute([]).map(|_| ())
}

/// Rolls the group back and fails every caller in it, run or not, with one
/// shared error that keeps SQLite's.
fn abort(
    conn: &Connection,
    calls: usize,
    staged: Vec<Staged>,
    unrun: impl Iterator<Item = Box<dyn Job>>,
    source: rusqlite::Error,
) {
    if !conn.is_autocommit()
        && let Err(error) = conn.execute_batch("ROLLBACK")
    {
        tracing::warn!(%error, "presence-sqlite: rolling back a failed group failed");
    }
    tracing::warn!(calls, error = %source, "presence-sqlite: a group's transaction failed");
    let shared = Error::from(SqliteError::Commit { calls, source }).share();
    for done in staged {
        (done.finish)(Some(&shared));
    }
    for job in unrun {
        job.fail(shared.error());
    }
}
