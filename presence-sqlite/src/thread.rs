//! The store's own threads, and waiting for them without blocking an async
//! runtime.

use tokio::sync::oneshot;

use crate::error::SqliteError;

/// A thread of the store: its handle, and a signal that it has finished.
#[derive(Debug)]
pub(crate) struct Worker {
    name: &'static str,
    handle: std::thread::JoinHandle<()>,
    done: oneshot::Receiver<()>,
}

impl Worker {
    /// Starts `run` on a thread called `presence-sqlite-{name}`.
    pub(crate) fn spawn(
        name: &'static str,
        run: impl FnOnce() + Send + 'static,
    ) -> Result<Self, SqliteError> {
        let (finished, done) = oneshot::channel();
        let handle = std::thread::Builder::new()
            .name(format!("presence-sqlite-{name}"))
            .spawn(move || {
                // Dropped when the thread ends, even by a panic: that is
                // the signal.
                let _finished = finished;
                run();
            })
            .map_err(|source| SqliteError::Thread {
                thread: name,
                source,
            })?;
        Ok(Self { name, handle, done })
    }

    /// Waits for the thread to end, from async code: the thread signals its
    /// end, and only then is it joined, on a blocking thread when there is a
    /// tokio runtime (joining a thread that has signalled takes no time, but
    /// never on a runtime worker).
    pub(crate) async fn join(self) {
        let Self { name, handle, done } = self;
        let _ = done.await;
        let join = move || {
            if handle.join().is_err() {
                tracing::warn!(thread = name, "a presence-sqlite thread panicked");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                // A runtime shutting down refuses the task: the thread has
                // ended anyway.
                let _ = runtime.spawn_blocking(join).await;
            }
            Err(_) => join(),
        }
    }

    /// Waits for the thread to end, from synchronous code (another of the
    /// store's threads, or a drop outside any runtime). Never waits for the
    /// calling thread itself.
    pub(crate) fn join_blocking(self) {
        if self.handle.thread().id() == std::thread::current().id() {
            return;
        }
        if self.handle.join().is_err() {
            tracing::warn!(thread = self.name, "a presence-sqlite thread panicked");
        }
    }
}
