//! Write coalescing: concurrent single-key calls from many tasks ride one
//! script call (one per shard group), while every caller gets its own
//! result.
//!
//! Each kind of call (join, touch, leave) has a queue and a task. The task
//! takes one of its permits (how many batches of that kind may be in flight
//! at once), then everything queued at that moment, and runs it as one
//! batch. While the permits are busy requests pile up, so the busier the
//! store, the larger the batches.

use std::future::Future;
use std::sync::{Arc, Mutex};

use presence_core::{Error, Result};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};

use crate::conn::BACKEND;

const MAX_YIELDS: usize = 8;

type Request<Q, A> = (Q, oneshot::Sender<Result<A>>);

/// The queue of one kind of call.
pub(crate) struct Batcher<Q, A> {
    queue: Mutex<Option<mpsc::UnboundedSender<Request<Q, A>>>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl<Q: Send + 'static, A: Send + 'static> Batcher<Q, A> {
    /// Starts the batching task. `run` executes one batch and answers each
    /// request, in order; `permits` bounds the batches in flight; a batch
    /// carries at most `max` requests.
    pub(crate) fn start<F, Fut>(kind: &'static str, permits: usize, max: usize, run: F) -> Self
    where
        F: Fn(Vec<Q>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<Result<A>>> + Send + 'static,
    {
        let (queue, mut requests) = mpsc::unbounded_channel::<Request<Q, A>>();
        let run = Arc::new(run);
        let permits = Arc::new(Semaphore::new(permits.max(1)));
        let task = tokio::spawn(async move {
            let mut running = JoinSet::new();
            loop {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                let Some(first) = requests.recv().await else {
                    break;
                };
                let mut batch = vec![first];
                drain(&mut requests, &mut batch, max);
                // Let the callers the last batch just answered queue their
                // next calls, so they ride this batch.
                for _ in 0..MAX_YIELDS {
                    let before = batch.len();
                    tokio::task::yield_now().await;
                    drain(&mut requests, &mut batch, max);
                    if batch.len() == before || batch.len() >= max {
                        break;
                    }
                }
                presence_core::metrics::batch(BACKEND, kind, batch.len());
                let run = run.clone();
                running.spawn(async move {
                    let (inputs, replies): (Vec<Q>, Vec<_>) = batch.into_iter().unzip();
                    let count = inputs.len();
                    let started = std::time::Instant::now();
                    let answers = run(inputs).await;
                    let took_us = started.elapsed().as_micros() as u64;
                    if kind == "touch" {
                        // Heartbeats: never above trace.
                        tracing::trace!(kind, size = count, took_us, "redis batch");
                    } else {
                        tracing::debug!(kind, size = count, took_us, "redis batch");
                    }
                    if answers.len() == count {
                        for (reply, answer) in replies.into_iter().zip(answers) {
                            let _ = reply.send(answer);
                        }
                    } else {
                        let why =
                            format!("a {kind} batch of {count} got {} answers", answers.len());
                        let error = Error::backend(BACKEND, why).share();
                        for reply in replies {
                            let _ = reply.send(Err(error.error()));
                        }
                    }
                    drop(permit);
                });
                // Reap finished batches as we go.
                while running.try_join_next().is_some() {}
            }
            while running.join_next().await.is_some() {}
        });
        Self {
            queue: Mutex::new(Some(queue)),
            task: Mutex::new(Some(task)),
        }
    }

    /// Queues one request and waits for its own answer.
    pub(crate) async fn call(&self, request: Q) -> Result<A> {
        let (reply, answer) = oneshot::channel();
        let sent = self
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|queue| queue.send((request, reply)).is_ok());
        if sent != Some(true) {
            return Err(Error::Closed { backend: BACKEND });
        }
        answer
            .await
            .unwrap_or(Err(Error::Closed { backend: BACKEND }))
    }

    /// Takes no more requests, answers the queued ones, and waits for the
    /// task to end.
    pub(crate) async fn close(&self) {
        drop(self.queue.lock().unwrap_or_else(|e| e.into_inner()).take());
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

impl<Q, A> Drop for Batcher<Q, A> {
    fn drop(&mut self) {
        if let Some(task) = self
            .task
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            task.abort();
        }
    }
}

/// Moves what is queued into `batch`, up to `max`.
fn drain<T>(requests: &mut mpsc::UnboundedReceiver<T>, batch: &mut Vec<T>, max: usize) {
    while batch.len() < max {
        match requests.try_recv() {
            Ok(request) => batch.push(request),
            Err(_) => break,
        }
    }
}
