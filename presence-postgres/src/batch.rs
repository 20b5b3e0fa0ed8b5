//! Write coalescing: concurrent single-key calls from many tasks become one
//! statement, while every caller still gets its own result.
//!
//! Each kind of call (join, touch, leave) has a queue and a task that waits
//! for one of its permits (how many batches of that kind may run at once),
//! then takes every request queued at that moment and runs them as one
//! batch. While the permits are busy, requests pile up, so the busier the
//! store, the larger the batches: one app server heartbeating 50,000 sockets
//! needs a handful of statements, not 50,000 round trips.

use std::future::Future;
use std::sync::Arc;

use presence_core::{Error, Result};
use tokio::sync::{Semaphore, mpsc, oneshot};

/// The most requests one statement carries.
pub(crate) const MAX_BATCH: usize = 1_000;
const MAX_YIELDS: usize = 8;

type Request<Q, A> = (Q, oneshot::Sender<Result<A>>);

/// The queue of one kind of call.
pub(crate) struct Batcher<Q, A> {
    queue: mpsc::UnboundedSender<Request<Q, A>>,
    task: tokio::task::JoinHandle<()>,
}

impl<Q, A> Drop for Batcher<Q, A> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<Q: Send + 'static, A: Send + 'static> Batcher<Q, A> {
    /// Starts the batching task. `run` executes one batch and answers each
    /// request, in order; `permits` bounds the batches in flight.
    pub(crate) fn start<F, Fut>(permits: Arc<Semaphore>, run: F) -> Self
    where
        F: Fn(Vec<Q>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<A>>> + Send + 'static,
    {
        let (queue, mut requests) = mpsc::unbounded_channel::<Request<Q, A>>();
        let run = Arc::new(run);
        let task = tokio::spawn(async move {
            loop {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let Some(first) = requests.recv().await else {
                    return;
                };
                let mut batch = vec![first];
                drain(&mut requests, &mut batch);
                // Let the callers the last batch just answered queue their
                // next calls, so they ride this batch instead of forming a
                // cohort of their own: yield while yielding brings more.
                for _ in 0..MAX_YIELDS {
                    let before = batch.len();
                    tokio::task::yield_now().await;
                    drain(&mut requests, &mut batch);
                    if batch.len() == before {
                        break;
                    }
                }
                let run = run.clone();
                tokio::spawn(async move {
                    let (inputs, replies): (Vec<Q>, Vec<_>) = batch.into_iter().unzip();
                    let count = inputs.len();
                    match run(inputs).await {
                        Ok(answers) if answers.len() == count => {
                            for (reply, answer) in replies.into_iter().zip(answers) {
                                let _ = reply.send(Ok(answer));
                            }
                        }
                        Ok(answers) => {
                            let why = format!("a batch of {count} got {} answers", answers.len());
                            for reply in replies {
                                let _ = reply.send(Err(Error::backend("postgres", why.clone())));
                            }
                        }
                        Err(error) => {
                            let why = error.to_string();
                            for reply in replies {
                                let _ = reply.send(Err(Error::backend("postgres", why.clone())));
                            }
                        }
                    }
                    drop(permit);
                });
            }
        });
        Self { queue, task }
    }

    /// Queues one request and waits for its own answer.
    pub(crate) async fn call(&self, request: Q) -> Result<A> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((request, reply))
            .map_err(|_| Error::backend("postgres", "the store is shutting down"))?;
        answer
            .await
            .map_err(|_| Error::backend("postgres", "the batch was dropped"))?
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
