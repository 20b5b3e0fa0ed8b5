//! A room page on the embedded SQLite store: who is in the room (names and
//! avatars through an enricher), who is typing (meta), a count-only lobby
//! and a staff room only alice and carol may see.
//!
//! ```sh
//! cargo run -p presence-axum --example room
//! ```
//!
//! Settings (environment): `PRESENCE_ADDR` (default `127.0.0.1:3000`, port
//! 0 picks a free one), `PRESENCE_STORE` (default
//! `sqlite://presence-room.db`), `PRESENCE_TTL` (default `60s`) and
//! `PRESENCE_HEARTBEAT` (default half the TTL).
//!
//! Sign-in is a demo: `/login?user=NAME` sets a cookie. A real app plugs
//! its own session into `identify`.

use std::collections::HashMap;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use presence::serde_json::{Value, json};
use presence::{Access, ChannelConfig, Channels, MemberId, Topic};
use presence_axum::{CancellationToken, Config, PresenceWeb};

/// Who may see and enter the staff room.
const STAFF: [&str; 2] = ["alice", "carol"];

fn setting(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn duration(name: &str) -> Result<Option<Duration>, String> {
    setting(name)
        .map(|text| humantime::parse_duration(&text).map_err(|e| format!("{name}={text:?}: {e}")))
        .transpose()
}

/// The demo's sign-in: the `user` cookie, if it is a plain name.
fn user_of(headers: &HeaderMap) -> Option<MemberId> {
    let cookies = headers.get(header::COOKIE)?.to_str().ok()?;
    let name = cookies
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == "user")?
        .1;
    valid_name(name).then(|| MemberId::new(name).ok())?
}

fn valid_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn channels(store: std::sync::Arc<dyn presence::PresenceStore>) -> presence::Result<Channels> {
    Channels::new(store)
        .channel("room/", |_topic: Topic| async {
            Some(ChannelConfig::public())
        })
        .channel("lobby/", |_topic: Topic| async {
            Some(ChannelConfig {
                count_only: true,
                ..ChannelConfig::public()
            })
        })
        .channel("staff/", |_topic: Topic| async {
            let staff = Access::only(STAFF).ok()?;
            Some(ChannelConfig {
                view: staff.clone(),
                enter: staff,
                ..ChannelConfig::public()
            })
        })
        .enrich("room/", profiles)?
        .enrich("staff/", profiles)
}

/// The app's records: a display name and an avatar, in one batch.
async fn profiles(ids: Vec<MemberId>) -> presence::Result<HashMap<MemberId, Value>> {
    Ok(ids
        .into_iter()
        .map(|id| {
            let mut name = id.as_str().to_owned();
            if let Some(first) = name.get_mut(0..1) {
                first.make_ascii_uppercase();
            }
            let profile = json!({ "name": name, "avatar": format!("/avatars/{id}.svg") });
            (id, profile)
        })
        .collect())
}

async fn login(Query(query): Query<HashMap<String, String>>) -> Response {
    match query.get("user").filter(|name| valid_name(name)) {
        Some(name) => {
            let mut back = Redirect::to("/").into_response();
            let cookie = format!("user={name}; Path=/; HttpOnly; SameSite=Lax");
            back.headers_mut()
                .insert(header::SET_COOKIE, cookie.parse().expect("a valid header"));
            back
        }
        None => (
            StatusCode::BAD_REQUEST,
            "user: 1 to 32 of a-z, 0-9, - and _",
        )
            .into_response(),
    }
}

async fn page(headers: HeaderMap) -> Response {
    let Some(user) = user_of(&headers) else {
        return Html(LOGIN).into_response();
    };
    // The name is a plain [a-z0-9_-] name (checked), safe in the page.
    Html(PAGE.replace("{{USER}}", user.as_str())).into_response()
}

async fn avatar(Path(file): Path<String>) -> Response {
    let Some(name) = file.strip_suffix(".svg").filter(|name| valid_name(name)) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let hue = name
        .bytes()
        .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
        % 360;
    let initial = name[..1].to_ascii_uppercase();
    let svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="40" height="40"><circle cx="20" cy="20" r="20" fill="hsl({hue},60%,45%)"/><text x="20" y="26" font-size="18" text-anchor="middle" fill="white" font-family="sans-serif">{initial}</text></svg>"#
    );
    ([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response()
}

async fn shutdown_signal(shutdown: CancellationToken) {
    let terminate = async {
        #[cfg(unix)]
        if let Ok(mut signal) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            signal.recv().await;
            return;
        }
        std::future::pending::<()>().await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    shutdown.cancel();
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = setting("PRESENCE_ADDR").unwrap_or_else(|| "127.0.0.1:3000".into());
    let url = setting("PRESENCE_STORE").unwrap_or_else(|| "sqlite://presence-room.db".into());
    let ttl = duration("PRESENCE_TTL")?.unwrap_or(Duration::from_secs(60));
    let heartbeat = duration("PRESENCE_HEARTBEAT")?.unwrap_or(ttl / 2);

    let store = presence::connect(&url).await?;
    let channels = channels(store.clone())?;
    let shutdown = CancellationToken::new();
    let config = Config {
        ttl,
        heartbeat,
        shutdown: shutdown.clone(),
        ..Config::default()
    };
    let web = PresenceWeb::with_config(
        channels.clone(),
        |parts: &Parts| std::future::ready(user_of(&parts.headers)),
        config,
    )?;
    let sweeper = web.sweeper((ttl / 4).max(Duration::from_millis(250)));

    let app = Router::new()
        .route("/", get(page))
        .route("/login", get(login))
        .route("/avatars/{file}", get(avatar))
        .nest("/presence", web.router());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let bound = listener.local_addr()?;
    println!("presence room demo on {}", presence::redact(&url));
    println!("open http://{bound}/login?user=alice (and ?user=bob in another browser)");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal(shutdown))
        .await?;
    drop(sweeper);
    channels.close().await;
    store.close().await?;
    println!("stopped");
    Ok(())
}

const LOGIN: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>presence: sign in</title></head>
<body style="font-family: sans-serif; max-width: 40em; margin: 2em auto">
<h1>Who are you?</h1>
<p>A demo sign-in (a real app uses its own session):</p>
<ul>
  <li><a href="/login?user=alice">alice</a> (staff)</li>
  <li><a href="/login?user=bob">bob</a></li>
  <li><a href="/login?user=carol">carol</a> (staff)</li>
</ul>
</body></html>"#;

const PAGE: &str = include_str!("room.html");
