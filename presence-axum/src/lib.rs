#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod config;
mod error;
mod events;
mod hub;
mod input;
mod limits;
mod sync;
mod wire;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::future::{BoxFuture, join_all};
use presence::{
    Access, ChannelConfig, Channels, ConnectionId, Error, MemberId, Meta, PresenceKey, Topic,
};
use tokio::task::JoinHandle;

pub use config::{Config, RateLimit};
pub use error::ApiError;
/// The shutdown signal's type (from `tokio-util`).
pub use tokio_util::sync::CancellationToken;

use crate::events::{Viewer, last_positions};
use crate::hub::{HubSettings, Hubs, Tap};
use crate::input::{ChannelsQuery, channels_query, leave_request, update_request};
use crate::limits::{RateLimiter, Turns};
use crate::wire::{WebMember, WebState, to_json};

/// The browser client, as `GET /client.js` serves it.
pub const CLIENT_JS: &str = include_str!("../client/presence.js");

/// The token a `/leave` beacon carried in its body (`token=`), put in the
/// request's extensions before `identify` runs: a beacon cannot send
/// headers, so an app that authenticates with a header reads it here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BeaconToken(pub String);

/// The app's `identify`: from a request's head (cookies, headers,
/// extensions such as a session) to the member, `None` for an anonymous
/// viewer.
type IdentifyFn = Arc<dyn Fn(&Parts) -> BoxFuture<'static, Option<MemberId>> + Send + Sync>;

/// The web edge over a [`Channels`]: build it once, nest its
/// [`router`](Self::router) in the app and run its
/// [`sweeper`](Self::sweeper).
#[derive(Clone)]
pub struct PresenceWeb {
    web: Arc<Web>,
}

pub(crate) struct Web {
    channels: Channels,
    identify: IdentifyFn,
    config: Config,
    limiter: RateLimiter<(MemberId, ConnectionId)>,
    turns: Turns<(Topic, MemberId)>,
    hubs: Hubs,
    /// Who the channels are asked as for an anonymous viewer: only a
    /// channel whose `view` is [`Access::Public`] is shown then, whatever
    /// a check says of this id.
    anonymous: MemberId,
}

/// The router with the default [`Config`]: `PresenceWeb::new(channels,
/// identify).router()`.
pub fn router<S, F, Fut>(channels: Channels, identify: F) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    F: Fn(&Parts) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Option<MemberId>> + Send + 'static,
{
    PresenceWeb::new(channels, identify).router()
}

impl PresenceWeb {
    /// The web edge with the default [`Config`].
    pub fn new<F, Fut>(channels: Channels, identify: F) -> Self
    where
        F: Fn(&Parts) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Option<MemberId>> + Send + 'static,
    {
        Self::with_config(channels, identify, Config::default())
            .expect("the default config is valid")
    }

    /// The web edge with `config`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] naming the setting when one is zero or
    /// inconsistent (see [`Config::validate`]).
    pub fn with_config<F, Fut>(
        channels: Channels,
        identify: F,
        config: Config,
    ) -> presence::Result<Self>
    where
        F: Fn(&Parts) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Option<MemberId>> + Send + 'static,
    {
        config.validate()?;
        let identify: IdentifyFn = Arc::new(move |parts| Box::pin(identify(parts)));
        let hubs = Hubs::new(HubSettings {
            coalesce: config.coalesce,
            history: config.history,
            linger: config.linger,
            shutdown: config.shutdown.clone(),
        });
        Ok(Self {
            web: Arc::new(Web {
                channels,
                identify,
                limiter: RateLimiter::new(config.rate_limit),
                turns: Turns::new(),
                hubs,
                anonymous: MemberId::new("\u{1}anonymous").expect("a valid member id"),
                config,
            }),
        })
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.web.config
    }

    /// The channels underneath.
    pub fn channels(&self) -> &Channels {
        &self.web.channels
    }

    /// How many channels have a shared event feed open in this process.
    pub fn open_feeds(&self) -> usize {
        self.web.hubs.open_count()
    }

    /// The routes, to `.nest("/presence", ..)` in the app:
    /// `GET /state`, `POST /update`, `POST /leave`, `GET /events` and
    /// `GET /client.js`.
    pub fn router<S: Clone + Send + Sync + 'static>(&self) -> Router<S> {
        Router::new()
            .route("/state", get(state))
            .route("/update", post(update))
            .route("/leave", post(leave))
            .route("/events", get(events))
            .route("/client.js", get(client_js))
            .with_state(self.web.clone())
    }

    /// Sweeps expired connections every `every` until the shutdown signal
    /// or until the handle is dropped: each channel with its own TTL when
    /// shorter than [`Config::ttl`], everything else with `Config::ttl`
    /// ([`Channels::sweep_expired`]). Run one per app server (several on a
    /// shared store report each departure once).
    pub fn sweeper(&self, every: Duration) -> SweeperTask {
        let web = self.web.clone();
        let every = every.max(Duration::from_millis(10));
        SweeperTask(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = web.config.shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                if let Err(error) = web.channels.sweep_expired(web.config.ttl).await {
                    tracing::warn!(error = %error.chain(), "presence sweep failed; retrying next interval");
                }
            }
        }))
    }
}

impl std::fmt::Debug for PresenceWeb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresenceWeb")
            .field("channels", &self.web.channels)
            .field("config", &self.web.config)
            .finish_non_exhaustive()
    }
}

/// A running [`PresenceWeb::sweeper`]; dropping it stops the sweeps.
#[derive(Debug)]
pub struct SweeperTask(JoinHandle<()>);

impl Drop for SweeperTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Whether a refusal of `Channels` means "not in it": no such channel, not
/// visible, not allowed, full. Each answers `false` alike.
fn refused(error: &Error) -> bool {
    matches!(
        error,
        Error::NotFound { .. } | Error::Forbidden { .. } | Error::TopicFull { .. }
    )
}

impl Web {
    async fn identify(&self, parts: &Parts) -> Option<MemberId> {
        (self.identify)(parts).await
    }

    /// The channel's config if `viewer` (anonymous: `None`) may see it.
    pub(crate) async fn visible(
        &self,
        viewer: Option<&MemberId>,
        topic: &Topic,
    ) -> presence::Result<Option<Arc<ChannelConfig>>> {
        match self
            .channels
            .config(viewer.unwrap_or(&self.anonymous), topic)
            .await
        {
            Ok(config) if viewer.is_some() || matches!(config.view, Access::Public) => {
                Ok(Some(config))
            }
            Ok(_) | Err(Error::NotFound { .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Refuses a POST a browser says comes from another site.
    fn same_site(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        if self.config.allow_cross_site {
            return Ok(());
        }
        if let Some(site) = headers.get("sec-fetch-site") {
            return if site.as_bytes().eq_ignore_ascii_case(b"cross-site") {
                Err(ApiError::cross_site())
            } else {
                Ok(())
            };
        }
        // Browsers without fetch metadata still send Origin on POSTs.
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin_host = origin
                .to_str()
                .ok()
                .and_then(|origin| origin.split_once("://"))
                .map(|(_, host)| host);
            let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
            if origin_host.is_none() || origin_host != host {
                return Err(ApiError::cross_site());
            }
        }
        Ok(())
    }

    async fn body(&self, body: Body) -> Result<bytes::Bytes, ApiError> {
        axum::body::to_bytes(body, self.config.max_body_bytes)
            .await
            .map_err(|error| {
                let too_large = std::error::Error::source(&error)
                    .is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
                if too_large {
                    ApiError::too_large(self.config.max_body_bytes)
                } else {
                    ApiError::bad_input("body", format!("the body could not be read: {error}"))
                }
            })
    }

    /// Makes (member, client) present in `topic`: a heartbeat if it is,
    /// a join within the member's connection cap if not; sets its meta
    /// when given. `false` for a channel it may not be in, or full.
    async fn be_present(
        &self,
        member: &MemberId,
        client: &ConnectionId,
        topic: Topic,
        meta: Option<Meta>,
    ) -> presence::Result<bool> {
        let Some(config) = self.visible(Some(member), &topic).await? else {
            return Ok(false);
        };
        let key = PresenceKey {
            topic,
            member: member.clone(),
            connection: client.clone(),
        };
        if !config.enter.allows(member) {
            // Its access was taken away: a heartbeat no longer keeps it.
            self.leave_one(member, &key).await?;
            return Ok(false);
        }
        // One change of this member's connections here at a time, so the
        // count read below is still true when the join lands.
        let _turn = self.turns.take((key.topic.clone(), member.clone())).await;
        let store = self.channels.store();
        let present = store.touch(&key).await?;
        if !present {
            let connections = store
                .member(&key.topic, member)
                .await?
                .map_or(0, |m| m.connections.len());
            if connections >= self.config.max_connections_per_member as usize {
                return Ok(false);
            }
        }
        if present && meta.is_none() {
            return Ok(true);
        }
        // A join with the same meta emits nothing; with new meta, an update.
        match self
            .channels
            .join(member, &key, meta.unwrap_or_default())
            .await
        {
            Ok(_) => Ok(true),
            Err(error) if refused(&error) => Ok(false),
            Err(error) => Err(error),
        }
    }

    async fn leave_one(&self, member: &MemberId, key: &PresenceKey) -> presence::Result<()> {
        match self.channels.leave(member, key).await {
            Ok(_) => Ok(()),
            Err(error) if refused(&error) => Ok(()),
            Err(error) => Err(error),
        }
    }

    async fn channel_state(
        &self,
        viewer: Option<&MemberId>,
        topic: &Topic,
    ) -> presence::Result<Option<Vec<u8>>> {
        if self.visible(viewer, topic).await?.is_none() {
            return Ok(None);
        }
        if let Some(hub) = self.hubs.get(topic) {
            return Ok(Some(hub.web_state()));
        }
        let listed = match self
            .channels
            .members(viewer.unwrap_or(&self.anonymous), topic)
            .await
        {
            Ok(listed) => listed,
            Err(Error::NotFound { .. }) => return Ok(None),
            Err(error) => return Err(error),
        };
        Ok(Some(to_json(&WebState {
            channel: None,
            id: None,
            count_only: listed.count_only,
            counts: listed.counts,
            members: (!listed.count_only)
                .then(|| listed.members.iter().map(WebMember::of).collect()),
            last_id: Some(None),
        })))
    }

    async fn open_tap(
        &self,
        viewer: Option<&MemberId>,
        topic: &Topic,
        last: Option<(String, u64)>,
    ) -> presence::Result<Option<Tap>> {
        let Some(config) = self.visible(viewer, topic).await? else {
            return Ok(None);
        };
        let as_viewer = viewer.unwrap_or(&self.anonymous);
        let guard = match self
            .hubs
            .attach(&self.channels, as_viewer, topic, config.count_only)
            .await
        {
            Ok(guard) => guard,
            Err(Error::NotFound { .. }) => return Ok(None),
            Err(error) => return Err(error),
        };
        let after = last
            .filter(|(epoch, _)| epoch == guard.hub().epoch())
            .map(|(_, seq)| seq);
        guard.tap(after).map(Some).ok_or(Error::Closed {
            backend: "presence-axum",
        })
    }
}

/// A JSON object of channel name to raw JSON value, in the order given.
fn json_object<'a>(entries: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Vec<u8> {
    let mut out = vec![b'{'];
    for (i, (name, value)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&to_json(&name));
        out.push(b':');
        out.extend_from_slice(value);
    }
    out.push(b'}');
    out
}

/// A `200` of `body` with its type and caching.
fn typed(body: impl IntoResponse, content_type: &'static str, cache: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    response
}

fn json_response(body: Vec<u8>) -> Response {
    typed(body, "application/json", "no-store")
}

/// `GET /state?channel=..`: `{ name: { count_only, counts, members?, last_id } | null }`.
async fn state(State(web): State<Arc<Web>>, request: Request) -> Result<Response, ApiError> {
    let (parts, _) = request.into_parts();
    let ChannelsQuery { channels, .. } =
        channels_query(parts.uri.query(), web.config.max_channels)?;
    let viewer = web.identify(&parts).await;
    let answers = join_all(
        channels
            .iter()
            .map(|topic| web.channel_state(viewer.as_ref(), topic)),
    )
    .await;
    let mut values = Vec::with_capacity(answers.len());
    for answer in answers {
        values.push(answer?.unwrap_or_else(|| b"null".to_vec()));
    }
    Ok(json_response(json_object(
        channels
            .iter()
            .map(Topic::as_str)
            .zip(values.iter().map(Vec::as_slice)),
    )))
}

/// `POST /update`: `{ client_id, present, leave, meta }` to `{ name: bool }`.
async fn update(State(web): State<Arc<Web>>, request: Request) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    web.same_site(&parts.headers)?;
    let member = web
        .identify(&parts)
        .await
        .ok_or_else(ApiError::unauthenticated)?;
    let is_json = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        // A form on another site cannot send this type without the
        // browser asking first (CORS), so requiring it guards this POST.
        return Err(ApiError::bad_input("content-type", "send application/json"));
    }
    let body = web.body(body).await?;
    let request = update_request(
        &body,
        web.config.max_channels,
        web.channels.store().max_meta_bytes(),
    )?;
    web.limiter
        .spend((member.clone(), request.client.clone()))
        .map_err(|wait| ApiError::rate_limited(wait.as_secs_f64().ceil().max(1.0) as u64))?;
    let client = &request.client;
    let present = join_all(
        request
            .present
            .iter()
            .map(|(topic, meta)| web.be_present(&member, client, topic.clone(), meta.clone())),
    );
    let leaving = join_all(request.leave.iter().map(|topic| async {
        let key = PresenceKey {
            topic: topic.clone(),
            member: member.clone(),
            connection: client.clone(),
        };
        web.leave_one(&member, &key).await
    }));
    let (present, leaving) = tokio::join!(present, leaving);
    let mut answers = Vec::new();
    for ((topic, _), entered) in request.present.iter().zip(present) {
        answers.push((
            topic.as_str(),
            if entered? { &b"true"[..] } else { b"false" },
        ));
    }
    for (topic, left) in request.leave.iter().zip(leaving) {
        left?;
        answers.push((topic.as_str(), b"false"));
    }
    let mut response = json_response(json_object(answers));
    response.headers_mut().insert(
        "x-presence-heartbeat-ms",
        HeaderValue::from(web.config.heartbeat.as_millis() as u64),
    );
    Ok(response)
}

/// `POST /leave`: what `navigator.sendBeacon` sends when the page goes
/// away; `{ name: false }` for each channel named.
async fn leave(State(web): State<Arc<Web>>, request: Request) -> Result<Response, ApiError> {
    let (mut parts, body) = request.into_parts();
    web.same_site(&parts.headers)?;
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let body = web.body(body).await?;
    let request = leave_request(content_type.as_deref(), &body, web.config.max_channels)?;
    if let Some(token) = &request.token {
        parts.extensions.insert(BeaconToken(token.clone()));
    }
    let member = web
        .identify(&parts)
        .await
        .ok_or_else(ApiError::unauthenticated)?;
    let left = join_all(request.leave.iter().map(|topic| {
        let key = PresenceKey {
            topic: topic.clone(),
            member: member.clone(),
            connection: request.client.clone(),
        };
        let web = &web;
        let member = &member;
        async move { web.leave_one(member, &key).await }
    }))
    .await;
    for result in left {
        result?;
    }
    Ok(json_response(json_object(
        request
            .leave
            .iter()
            .map(|topic| (topic.as_str(), &b"false"[..])),
    )))
}

/// `GET /events?channel=..`: Server-Sent Events, `state` then `diff`s.
async fn events(State(web): State<Arc<Web>>, request: Request) -> Result<Response, ApiError> {
    let (parts, _) = request.into_parts();
    let ChannelsQuery {
        channels,
        last_event_id,
    } = channels_query(parts.uri.query(), web.config.max_channels)?;
    if web.config.shutdown.is_cancelled() {
        return Err(ApiError::shutting_down());
    }
    let header_id = parts
        .headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let last = last_positions(header_id.or(last_event_id).as_deref(), channels.len());
    let viewer = web.identify(&parts).await;
    let taps = join_all(
        channels
            .iter()
            .zip(last)
            .map(|(topic, last)| web.open_tap(viewer.as_ref(), topic, last)),
    )
    .await;
    let mut stream = Viewer::new(web.clone(), viewer, channels);
    for (index, tap) in taps.into_iter().enumerate() {
        match tap? {
            Some(tap) => stream.follow(index, tap),
            None => stream.missing(index),
        }
    }
    let mut response = Response::new(Body::from_stream(stream.into_stream()));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Proxies such as nginx would otherwise hold frames back.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// `GET /client.js`: the browser client.
async fn client_js() -> Response {
    typed(CLIENT_JS, "text/javascript; charset=utf-8", "no-cache")
}
