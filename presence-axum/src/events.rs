//! `GET /events`: one Server-Sent Events stream for a viewer of one or
//! more channels.
//!
//! Each channel's frames are shared by all its viewers (serialized once);
//! this stream only adds its own `id:` line: the positions of all its
//! channels, `epoch.seq` each, comma-separated in the order requested
//! (empty for a channel the viewer may not see), which is what
//! `Last-Event-ID` brings back on a reconnect.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{self, BoxStream, SelectAll, StreamExt};
use presence::{MemberId, Topic};
use tokio::time::{Instant, Interval};
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::Web;
use crate::hub::{Frame, Tap};
use crate::wire::{WebMissing, to_json};

/// A channel of the stream.
struct Position {
    topic: Topic,
    /// `epoch.seq` of the last frame sent; empty while none (or missing).
    id: String,
    epoch: String,
    /// The viewer may no longer see it: its frames are dropped.
    revoked: bool,
}

/// A frame of channel `.0`, or `None` when the channel's hub closed.
type Tagged = (usize, Option<Frame>);

/// The events of one response.
pub(crate) struct Viewer {
    web: Arc<Web>,
    viewer: Option<MemberId>,
    positions: Vec<Position>,
    /// Each channel's frames, tagged with its index; `None` once its hub
    /// closed, which ends the response (the browser reconnects).
    frames: SelectAll<BoxStream<'static, Tagged>>,
    keep_alive: Interval,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Chunks ready to send, in order.
    ready: std::collections::VecDeque<Bytes>,
}

/// Where a reconnect left off, per channel: `epoch.seq` or nothing.
pub(crate) fn last_positions(
    last_event_id: Option<&str>,
    channels: usize,
) -> Vec<Option<(String, u64)>> {
    let parsed: Vec<Option<(String, u64)>> = last_event_id
        .map(|id| {
            id.split(',')
                .map(|part| {
                    let (epoch, seq) = part.trim().split_once('.')?;
                    Some((epoch.to_owned(), seq.parse().ok()?))
                })
                .collect()
        })
        .unwrap_or_default();
    if parsed.len() == channels {
        parsed
    } else {
        vec![None; channels]
    }
}

fn missing_frame(topic: &Topic) -> Bytes {
    let data = to_json(&WebMissing {
        channel: topic.as_str(),
        missing: true,
    });
    let mut text = Vec::with_capacity(data.len() + 24);
    text.extend_from_slice(b"event: state\ndata: ");
    text.extend_from_slice(&data);
    text.extend_from_slice(b"\n\n");
    Bytes::from(text)
}

impl Viewer {
    /// A stream whose channels all start as not (yet) visible.
    pub(crate) fn new(web: Arc<Web>, viewer: Option<MemberId>, topics: Vec<Topic>) -> Self {
        let every = web.config.keep_alive;
        let shutdown = Box::pin(web.config.shutdown.clone().cancelled_owned());
        Self {
            web,
            viewer,
            positions: topics
                .into_iter()
                .map(|topic| Position {
                    topic,
                    id: String::new(),
                    epoch: String::new(),
                    revoked: false,
                })
                .collect(),
            frames: SelectAll::new(),
            keep_alive: tokio::time::interval_at(Instant::now() + every, every),
            shutdown,
            ready: Default::default(),
        }
    }

    /// Channel `index` cannot be seen: say so, once, with the same bytes
    /// for a hidden and a missing channel.
    pub(crate) fn missing(&mut self, index: usize) {
        let position = &mut self.positions[index];
        position.revoked = true;
        position.id.clear();
        self.ready.push_back(missing_frame(&position.topic));
    }

    /// Channel `index` is followed through `tap`.
    pub(crate) fn follow(&mut self, index: usize, tap: Tap) {
        self.positions[index].epoch = tap.hub_epoch().to_owned();
        let frames = stream::unfold(Some(tap), move |tap| async move {
            let mut tap = tap?;
            match tap.next().await {
                Some(frame) => Some(((index, Some(frame)), Some(tap))),
                None => Some(((index, None), None)),
            }
        });
        self.frames.push(frames.boxed());
    }

    fn id_line(&self) -> Bytes {
        let mut line = String::from("id: ");
        for (i, position) in self.positions.iter().enumerate() {
            if i > 0 {
                line.push(',');
            }
            line.push_str(&position.id);
        }
        line.push('\n');
        Bytes::from(line)
    }

    /// The next chunk to send; `None` ends the response.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if let Some(chunk) = self.ready.pop_front() {
                return Some(chunk);
            }
            let no_frames = self.frames.is_empty();
            tokio::select! {
                biased;
                () = &mut self.shutdown => return None,
                item = self.frames.next(), if !no_frames => {
                    let (index, frame) = item?;
                    let frame = frame?;
                    let single = self.positions.len() == 1;
                    let position = &mut self.positions[index];
                    if position.revoked {
                        continue;
                    }
                    if single {
                        // Its id line is this stream's: send it as shared.
                        self.ready.push_back(frame.bytes);
                    } else {
                        position.id = format!("{}.{}", position.epoch, frame.seq);
                        let id_line = self.id_line();
                        self.ready.push_back(id_line);
                        self.ready.push_back(frame.body());
                    }
                }
                _ = self.keep_alive.tick() => {
                    self.recheck().await;
                    self.ready.push_back(Bytes::from_static(b": keep-alive\n\n"));
                }
            }
        }
    }

    /// Drops the channels the viewer may no longer see (the app changed
    /// who may view them); a store failure keeps them for now.
    async fn recheck(&mut self) {
        for index in 0..self.positions.len() {
            if self.positions[index].revoked {
                continue;
            }
            let topic = self.positions[index].topic.clone();
            if let Ok(None) = self.web.visible(self.viewer.as_ref(), &topic).await {
                self.missing(index);
            }
        }
    }

    /// The response body: its chunks as they come.
    pub(crate) fn into_stream(self) -> BoxStream<'static, Result<Bytes, Infallible>> {
        stream::unfold(self, |mut viewer| async move {
            let chunk = viewer.next_chunk().await?;
            Some((Ok(chunk), viewer))
        })
        .boxed()
    }
}
