//! The app every endpoint test runs: channels of each kind over a store of
//! each backend, called through `tower::ServiceExt::oneshot`, and a reader
//! of Server-Sent Events.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request, StatusCode, request::Parts};
use futures::StreamExt;
use presence::serde_json::{self, Value, json};
use presence::{Access, ChannelConfig, Channels, MemberId, PresenceStore, Topic};
use presence_axum::{Config, PresenceWeb};
use tower::ServiceExt;

/// Which store a test runs on.
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Memory,
    Sqlite,
    Postgres,
}

/// How a test makes a store fail underneath the router.
pub enum Breaker {
    /// Close the store: every call then fails.
    Close(Arc<dyn PresenceStore>),
    /// Drop the store's schema behind its back.
    DropSchema { url: String, schema: String },
}

impl Breaker {
    pub async fn break_store(self) {
        match self {
            Breaker::Close(store) => store.close().await.unwrap(),
            Breaker::DropSchema { url, schema } => {
                let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .expect("connect to the test server");
                let driver = tokio::spawn(connection);
                client
                    .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
                    .await
                    .expect("drop the schema");
                drop(client);
                let _ = driver.await;
            }
        }
    }
}

impl Backend {
    /// A fresh store, or `None` (after saying why) when Postgres is not
    /// available here and not required.
    pub async fn open(self) -> Option<Arc<dyn PresenceStore>> {
        Some(self.open_breakable().await?.0)
    }

    /// A fresh store and how to make it fail.
    pub async fn open_breakable(self) -> Option<(Arc<dyn PresenceStore>, Breaker)> {
        let store: Arc<dyn PresenceStore> = match self {
            Backend::Memory => Arc::new(presence::memory::MemoryStore::new()),
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("a temporary directory").keep();
                let config = presence::sqlite::SqliteConfig::file(dir.join("presence.db"));
                Arc::new(
                    presence::sqlite::SqliteStore::open(config)
                        .await
                        .expect("open SQLite"),
                )
            }
            Backend::Postgres => {
                if let Some(why) = presence::postgres::testing::unavailable() {
                    eprintln!("SKIPPED: {why}");
                    return None;
                }
                let config = presence::postgres::testing::store_config("web");
                let breaker = Breaker::DropSchema {
                    url: presence::postgres::testing::server_url().expect("a server"),
                    schema: config.schema.clone(),
                };
                let store = Arc::new(
                    presence::postgres::PostgresStore::connect(config)
                        .await
                        .expect("connect to the test server"),
                );
                return Some((store, breaker));
            }
        };
        Some((store.clone(), Breaker::Close(store)))
    }
}

/// Runs `$test(Backend)` as one `#[test]` per backend.
#[macro_export]
macro_rules! on_every_backend {
    ($($test:ident),* $(,)?) => {
        $crate::on_every_backend!(@backend memory, Memory; $($test),*);
        $crate::on_every_backend!(@backend sqlite, Sqlite; $($test),*);
        $crate::on_every_backend!(@backend postgres, Postgres; $($test),*);
    };
    (@backend $module:ident, $backend:ident; $($test:ident),*) => {
        mod $module {
            $(
                #[test]
                fn $test() {
                    conformance::run(super::$test($crate::support::Backend::$backend));
                }
            )*
        }
    };
}

/// The test's channels:
/// - `room/*`: public, enriched with `{ "name": "<ID>" }`;
/// - `staff/*`: only alice may see or enter it;
/// - `lobby/*`: count-only, public;
/// - `stage/*`: anyone sees it, only alice enters;
/// - `small/*`: at most 2 members;
/// - anything else does not exist.
pub fn channels(store: Arc<dyn PresenceStore>) -> Channels {
    let public = |_topic: Topic| async { Some(ChannelConfig::public()) };
    Channels::new(store)
        .channel("room/", public)
        .channel("staff/", |_topic| async {
            let alice = Access::only(["alice"]).ok()?;
            Some(ChannelConfig {
                view: alice.clone(),
                enter: alice,
                ..ChannelConfig::public()
            })
        })
        .channel("lobby/", |_topic| async {
            Some(ChannelConfig {
                count_only: true,
                ..ChannelConfig::public()
            })
        })
        .channel("stage/", |_topic| async {
            Some(ChannelConfig {
                enter: Access::only(["alice"]).ok()?,
                ..ChannelConfig::public()
            })
        })
        .channel("small/", |_topic| async {
            Some(ChannelConfig {
                max_members: Some(2),
                ..ChannelConfig::public()
            })
        })
        .enrich("room/", |ids: Vec<MemberId>| async move {
            Ok(ids
                .into_iter()
                .map(|id| {
                    let name = id.as_str().to_uppercase();
                    (id, json!({ "name": name }))
                })
                .collect::<HashMap<_, _>>())
        })
        .expect("room/ is registered")
}

/// The member named by the `x-user` header; anonymous without one.
pub async fn identify_header(user: Option<String>) -> Option<MemberId> {
    MemberId::new(user?).ok()
}

/// A test app: the router nested under `/presence`.
pub struct App {
    pub web: PresenceWeb,
    pub router: Router,
    pub store: Arc<dyn PresenceStore>,
}

impl App {
    pub fn new(store: Arc<dyn PresenceStore>, config: Config) -> Self {
        Self::with_channels(channels(store), config)
    }

    /// The router over channels of the test's own, on their store.
    pub fn with_channels(channels: Channels, config: Config) -> Self {
        let store = channels.store().clone();
        let web = PresenceWeb::with_config(
            channels,
            |parts: &Parts| {
                let user = parts
                    .headers
                    .get("x-user")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                identify_header(user)
            },
            config,
        )
        .expect("a valid config");
        let router = Router::new().nest("/presence", web.router());
        Self { web, router, store }
    }

    /// Sends a request; the status, headers and whole body.
    pub async fn send(&self, request: Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("a body");
        (status, headers, body)
    }

    pub async fn get(&self, path: &str, user: Option<&str>) -> (StatusCode, Bytes) {
        let mut request = Request::get(path);
        if let Some(user) = user {
            request = request.header("x-user", user);
        }
        let (status, _, body) = self.send(request.body(Body::empty()).unwrap()).await;
        (status, body)
    }

    pub async fn update(&self, user: Option<&str>, body: Value) -> (StatusCode, HeaderMap, Bytes) {
        self.post(
            "/presence/update",
            user,
            "application/json",
            body.to_string(),
        )
        .await
    }

    pub async fn post(
        &self,
        path: &str,
        user: Option<&str>,
        content_type: &str,
        body: impl Into<Body>,
    ) -> (StatusCode, HeaderMap, Bytes) {
        let mut request = Request::post(path).header("content-type", content_type);
        if let Some(user) = user {
            request = request.header("x-user", user);
        }
        self.send(request.body(body.into()).unwrap()).await
    }

    /// Opens `/events` for `query`, as `user`, continuing from `last_id`.
    pub async fn events(&self, query: &str, user: Option<&str>, last_id: Option<&str>) -> Sse {
        let mut request = Request::get(format!("/presence/events?{query}"));
        if let Some(user) = user {
            request = request.header("x-user", user);
        }
        if let Some(last_id) = last_id {
            request = request.header("last-event-id", last_id);
        }
        let response = self
            .router
            .clone()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .expect("infallible");
        assert_eq!(response.status(), StatusCode::OK, "opening /events?{query}");
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Sse {
            body: response.into_body().into_data_stream().boxed(),
            buffer: Vec::new(),
            received: Vec::new(),
        }
    }
}

pub fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(bytes)))
}

/// One Server-Sent Event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: Value,
}

/// Reads events from a response body.
pub struct Sse {
    body: futures::stream::BoxStream<'static, Result<Bytes, axum::Error>>,
    buffer: Vec<u8>,
    /// Every byte received, to check what a viewer was sent.
    pub received: Vec<u8>,
}

/// How long a test waits for an event that must come: a bound that only
/// fails a broken build, never a measure of speed.
pub const PATIENCE: Duration = Duration::from_secs(20);

impl Sse {
    /// The next event (keep-alive comments skipped); `None` when the
    /// stream ended. Panics after [`PATIENCE`].
    pub async fn next(&mut self) -> Option<SseEvent> {
        tokio::time::timeout(PATIENCE, self.next_unbounded())
            .await
            .expect("an event within the test's patience")
    }

    /// Whether an event arrives within `wait` (to check none does).
    pub async fn next_within(&mut self, wait: Duration) -> Option<Option<SseEvent>> {
        tokio::time::timeout(wait, self.next_unbounded()).await.ok()
    }

    async fn next_unbounded(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let text = String::from_utf8(block).expect("UTF-8 events");
                let mut event = SseEvent {
                    id: None,
                    event: "message".into(),
                    data: Value::Null,
                };
                let mut data = None;
                for line in text.lines() {
                    if let Some(id) = line.strip_prefix("id: ") {
                        event.id = Some(id.to_owned());
                    } else if let Some(name) = line.strip_prefix("event: ") {
                        event.event = name.to_owned();
                    } else if let Some(text) = line.strip_prefix("data: ") {
                        data = Some(json(text.as_bytes()));
                    }
                }
                match data {
                    Some(data) => {
                        event.data = data;
                        return Some(event);
                    }
                    None => continue, // a comment
                }
            }
            let chunk = self.body.next().await?.expect("a body chunk");
            self.received.extend_from_slice(&chunk);
            self.buffer.extend_from_slice(&chunk);
        }
    }

    /// Reads diffs until `done` holds for the member list they build on
    /// `state`; returns how many diffs that took.
    pub async fn until(
        &mut self,
        state: &mut Members,
        mut done: impl FnMut(&Members) -> bool,
    ) -> usize {
        let mut diffs = 0;
        while !done(state) {
            let event = self.next().await.expect("the stream goes on");
            state.apply(&event);
            if event.event == "diff" {
                diffs += 1;
            }
        }
        diffs
    }
}

/// A member list kept from events, as the browser client keeps it.
#[derive(Default, Debug, Clone)]
pub struct Members {
    pub members: std::collections::BTreeMap<String, Value>,
    pub counts: Value,
    pub last_id: Option<String>,
}

impl Members {
    pub fn apply(&mut self, event: &SseEvent) {
        match event.event.as_str() {
            "state" => {
                self.members.clear();
                for member in event.data["members"].as_array().into_iter().flatten() {
                    self.members
                        .insert(member["id"].as_str().unwrap().to_owned(), member.clone());
                }
            }
            "diff" => {
                for id in event.data["leaves"].as_array().into_iter().flatten() {
                    self.members.remove(id.as_str().unwrap());
                }
                for member in event.data["joins"].as_array().into_iter().flatten() {
                    self.members
                        .insert(member["id"].as_str().unwrap().to_owned(), member.clone());
                }
            }
            other => panic!("unexpected event {other}"),
        }
        self.counts = event.data["counts"].clone();
        self.last_id = event.data["id"].as_str().map(str::to_owned);
    }

    pub fn ids(&self) -> Vec<&str> {
        self.members.keys().map(String::as_str).collect()
    }
}
