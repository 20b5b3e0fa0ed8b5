//! The one writer: a thread that owns the write connection and commits every
//! call waiting for it as one transaction (group commit).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use presence_core::{Error, Event, Result, TopicBroadcast};
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use crate::checkpoint::{self, Checkpointer};
use crate::error::SqliteError;
use crate::sql::Sql;

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

/// Sends a caller its result, given the commit's error if there was one.
type Finish = Box<dyn FnOnce(Option<&str>) + Send>;

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
                finish: Box::new(move |commit_error| {
                    let result = match commit_error {
                        None => Ok(value),
                        Some(why) => Err(SqliteError::Commit(why.to_owned()).into()),
                    };
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

/// The handle callers use to reach the writer thread.
#[derive(Debug)]
pub(crate) struct Writer {
    /// `None` only while dropping.
    jobs: Option<mpsc::Sender<Box<dyn Job>>>,
    counters: Arc<Counters>,
    checkpoints: Option<Arc<checkpoint::Shared>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    /// Starts the writer thread on `conn`. It stops when every handle is gone.
    pub(crate) fn spawn(
        conn: Connection,
        sql: Arc<Sql>,
        channels: Arc<Mutex<TopicBroadcast>>,
        max_group: usize,
        checkpointer: Option<Checkpointer>,
    ) -> std::io::Result<Self> {
        let (jobs, receiver) = mpsc::channel(max_group.max(1) * 4);
        let counters = Arc::new(Counters::default());
        let thread_counters = counters.clone();
        let checkpoints = checkpointer.as_ref().map(Checkpointer::shared);
        let thread = std::thread::Builder::new()
            .name("presence-sqlite-writer".into())
            .spawn(move || {
                let group = max_group.max(1);
                write_loop(
                    conn,
                    &sql,
                    &channels,
                    &thread_counters,
                    checkpointer,
                    receiver,
                    group,
                );
            })?;
        Ok(Self {
            jobs: Some(jobs),
            counters,
            checkpoints,
            thread: Some(thread),
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
        let (reply, result) = oneshot::channel();
        let call: Box<dyn Job> = Box::new(Call {
            work: Box::new(work),
            reply,
        });
        let jobs = self.jobs.as_ref().expect("the writer is running");
        jobs.send(call)
            .await
            .map_err(|_| Error::from(SqliteError::WriterGone))?;
        result
            .await
            .map_err(|_| Error::from(SqliteError::WriterGone))?
    }
}

impl Drop for Writer {
    /// Waits for the writer thread (and its checkpointer) to finish what
    /// it was doing and close its connection, so that once a store is
    /// dropped nothing writes to its file. Callers hold the store while
    /// they wait, so no call is left waiting.
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn write_loop(
    conn: Connection,
    sql: &Sql,
    channels: &Mutex<TopicBroadcast>,
    counters: &Counters,
    checkpointer: Option<Checkpointer>,
    mut receiver: mpsc::Receiver<Box<dyn Job>>,
    max_group: usize,
) {
    while let Some(first) = receiver.blocking_recv() {
        let mut group = vec![first];
        while group.len() < max_group {
            match receiver.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        counters
            .calls
            .fetch_add(group.len() as u64, Ordering::Relaxed);
        if commit_group(&conn, sql, channels, group) {
            counters.commits.fetch_add(1, Ordering::Relaxed);
            if let Some(checkpointer) = &checkpointer {
                checkpointer.committed(&conn);
            }
        }
    }
}

/// One transaction for the whole group; each job in a savepoint of its own,
/// so a failing job is rolled back alone and fails only its caller. Results
/// and events are released only after COMMIT; if anything about the
/// transaction itself fails, every caller of the group gets the error and
/// nothing is applied. Returns whether the group committed.
fn commit_group(
    conn: &Connection,
    sql: &Sql,
    channels: &Mutex<TopicBroadcast>,
    group: Vec<Box<dyn Job>>,
) -> bool {
    let mut jobs = group.into_iter();
    if let Err(error) = conn.execute_batch("BEGIN IMMEDIATE") {
        abort(conn, Vec::new(), jobs, &error);
        return false;
    }
    let mut staged = Vec::with_capacity(jobs.len());
    while let Some(job) = jobs.next() {
        if let Err(error) = execute_cached(conn, "SAVEPOINT call") {
            abort(conn, staged, std::iter::once(job).chain(jobs), &error);
            return false;
        }
        let done = job.run(conn, sql);
        let ended = if done.ok {
            execute_cached(conn, "RELEASE call")
        } else {
            execute_cached(conn, "ROLLBACK TO call")
                .and_then(|()| execute_cached(conn, "RELEASE call"))
        };
        staged.push(done);
        if let Err(error) = ended {
            abort(conn, staged, jobs, &error);
            return false;
        }
    }
    if let Err(error) = conn.execute_batch("COMMIT") {
        abort(conn, staged, jobs, &error);
        return false;
    }
    let channels = channels.lock().unwrap_or_else(|e| e.into_inner());
    for done in staged {
        channels.send_all(done.events);
        (done.finish)(None);
    }
    true
}

/// Runs a parameterless statement kept prepared (savepoints run per call).
fn execute_cached(conn: &Connection, statement: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(statement)?.execute([]).map(|_| ())
}

/// Rolls the group back and fails every caller in it, run or not.
fn abort(
    conn: &Connection,
    staged: Vec<Staged>,
    unrun: impl Iterator<Item = Box<dyn Job>>,
    error: &rusqlite::Error,
) {
    if !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    let why = error.to_string();
    for done in staged {
        (done.finish)(Some(&why));
    }
    for job in unrun {
        job.fail(SqliteError::Commit(why.clone()).into());
    }
}
