//! Write coalescing: concurrent single-key calls from many tasks become one
//! statement, while every caller still gets its own result.
//!
//! Each kind of call (join, touch, leave) has a queue and a task that waits
//! for one of its permits (how many batches of that kind may run at once),
//! then takes every request queued at that moment and runs them as one
//! batch. While the permits are busy, requests pile up, so the busier the
//! store, the larger the batches: one app server heartbeating 50,000 sockets
//! needs a handful of statements, not 50,000 round trips.
//!
//! A failed batch fails each of its callers with the same error, its typed
//! cause shared ([`Error::share`]). [`Batcher::close`] stops taking
//! requests, runs and answers the ones already queued, and waits for every
//! batch in flight.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use presence_core::{Error, Result, metrics};
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};

use crate::errors::{BACKEND, failure};

/// The most requests one statement carries.
pub(crate) const MAX_BATCH: usize = 1_000;
const MAX_YIELDS: usize = 8;

type Request<Q, A> = (Q, oneshot::Sender<Result<A>>);

/// The queue of one kind of call.
pub(crate) struct Batcher<Q, A> {
    queue: mpsc::UnboundedSender<Request<Q, A>>,
    closing: Arc<Notify>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl<Q, A> Drop for Batcher<Q, A> {
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
    }
}

impl<Q: Send + 'static, A: Send + 'static> Batcher<Q, A> {
    /// Starts the batching task for calls of `kind` (`join`, `touch`,
    /// `leave`: the label of its logs and metrics). `run` executes one batch
    /// and answers each request, in order; `permits` bounds the batches in
    /// flight.
    pub(crate) fn start<F, Fut>(kind: &'static str, permits: Arc<Semaphore>, run: F) -> Self
    where
        F: Fn(Vec<Q>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<A>>> + Send + 'static,
    {
        let (queue, requests) = mpsc::unbounded_channel::<Request<Q, A>>();
        let closing = Arc::new(Notify::new());
        let task = tokio::spawn(batch_loop(kind, permits, requests, closing.clone(), run));
        Self {
            queue,
            closing,
            task: Mutex::new(Some(task)),
        }
    }

    /// Queues one request and waits for its own answer.
    pub(crate) async fn call(&self, request: Q) -> Result<A> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((request, reply))
            .map_err(|_| Error::Closed { backend: BACKEND })?;
        answer
            .await
            .map_err(|_| failure("the batch carrying this call was dropped"))?
    }

    /// Takes no more requests, answers every queued one, and returns once
    /// the last batch is done. Later calls fail with `Error::Closed`.
    pub(crate) async fn close(&self) {
        self.closing.notify_one();
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

async fn batch_loop<Q, A, F, Fut>(
    kind: &'static str,
    permits: Arc<Semaphore>,
    mut requests: mpsc::UnboundedReceiver<Request<Q, A>>,
    closing: Arc<Notify>,
    run: F,
) where
    Q: Send + 'static,
    A: Send + 'static,
    F: Fn(Vec<Q>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<A>>> + Send + 'static,
{
    let run = Arc::new(run);
    let mut running = JoinSet::new();
    let mut closed = false;
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let first = loop {
            tokio::select! {
                request = requests.recv() => break request,
                () = closing.notified(), if !closed => {
                    // Refuse new requests; the queued ones still come out.
                    closed = true;
                    requests.close();
                }
            }
        };
        let Some(first) = first else {
            break;
        };
        let mut batch = vec![first];
        drain(&mut requests, &mut batch);
        // Let the callers the last batch just answered queue their next
        // calls, so they ride this batch instead of forming a cohort of
        // their own: yield while yielding brings more.
        for _ in 0..MAX_YIELDS {
            let before = batch.len();
            tokio::task::yield_now().await;
            drain(&mut requests, &mut batch);
            if batch.len() == before {
                break;
            }
        }
        let run = run.clone();
        running.spawn(async move {
            let (inputs, replies): (Vec<Q>, Vec<_>) = batch.into_iter().unzip();
            let count = inputs.len();
            let started = Instant::now();
            let result = run(inputs).await;
            metrics::batch(BACKEND, kind, count);
            let took_ms = started.elapsed().as_secs_f64() * 1e3;
            let ok = result.is_ok();
            if kind == "touch" {
                // Heartbeats: nothing per heartbeat above trace.
                tracing::trace!(kind, size = count, took_ms, ok, "postgres batch");
            } else {
                tracing::debug!(kind, size = count, took_ms, ok, "postgres batch");
            }
            answer(replies, count, result);
            drop(permit);
        });
        // Reap finished batches as we go, so the set stays small.
        while running.try_join_next().is_some() {}
    }
    while running.join_next().await.is_some() {}
}

/// Hands each caller its answer, or each the batch's error.
fn answer<A>(replies: Vec<oneshot::Sender<Result<A>>>, count: usize, result: Result<Vec<A>>) {
    match result {
        Ok(answers) if answers.len() == count => {
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(Ok(answer));
            }
        }
        Ok(answers) => {
            let why = format!("a batch of {count} got {} answers", answers.len());
            fail_all(replies, failure(why));
        }
        Err(error) => fail_all(replies, error),
    }
}

fn fail_all<A>(mut replies: Vec<oneshot::Sender<Result<A>>>, error: Error) {
    if replies.len() == 1 {
        let _ = replies.pop().expect("one reply").send(Err(error));
        return;
    }
    let shared = error.share();
    for reply in replies {
        let _ = reply.send(Err(shared.error()));
    }
}

/// Moves what is queued into `batch`, up to [`MAX_BATCH`].
fn drain<T>(requests: &mut mpsc::UnboundedReceiver<T>, batch: &mut Vec<T>) {
    while batch.len() < MAX_BATCH {
        match requests.try_recv() {
            Ok(request) => batch.push(request),
            Err(_) => break,
        }
    }
}
