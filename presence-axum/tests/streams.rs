//! The event streams: coalescing, shutdown with viewers connected, and
//! stores whose events stay in one process.

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use presence::serde_json::json;
use presence::sqlite::{SqliteConfig, SqliteStore};
use presence_axum::{CancellationToken, Config};
use support::{App, Backend, Members, PATIENCE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// 200 members join one after another, 5 ms apart (by tokio's paused
/// clock, so the count does not depend on the machine's speed); returns
/// how many diffs the viewer received until it saw all of them.
async fn diffs_for_200_joins(coalesce: Duration) -> usize {
    let app = App::new(
        Arc::new(presence::memory::MemoryStore::new()),
        Config {
            coalesce,
            ..Config::default()
        },
    );
    let mut viewer = app.events("channel=room/busy", Some("viewer"), None).await;
    let mut members = Members::default();
    members.apply(&viewer.next().await.unwrap());
    // The viewer reads as the diffs come, as a browser does.
    let reading = tokio::spawn(async move {
        let diffs = viewer.until(&mut members, |m| m.members.len() == 200).await;
        assert_eq!(
            members.counts,
            json!({ "members": 200, "connections": 200 })
        );
        let states = String::from_utf8_lossy(&viewer.received)
            .matches("event: state")
            .count();
        assert_eq!(states, 1, "the viewer kept up: no state after the first");
        diffs
    });
    for i in 0..200 {
        let user = format!("user-{i:03}");
        let (status, _, _) = app
            .update(
                Some(&user),
                json!({ "client_id": "tab", "present": ["room/busy"] }),
            )
            .await;
        assert!(status.is_success());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    reading.await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_busy_channel_s_diffs_are_merged_over_the_window() {
    // 1 s of changes: the first at once, then one diff per 100 ms window.
    let merged = diffs_for_200_joins(Duration::from_millis(100)).await;
    assert!(
        (9..=12).contains(&merged),
        "{merged} diffs with a 100 ms window"
    );
    let each = diffs_for_200_joins(Duration::ZERO).await;
    assert_eq!(each, 200, "without coalescing every join is a diff");
}

/// A request on a raw connection; the bytes read until `until` appears.
async fn open_stream(addr: std::net::SocketAddr, path: &str) -> (tokio::net::TcpStream, String) {
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nx-user: viewer\r\n\r\n");
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut seen = String::new();
    let mut buffer = [0u8; 4096];
    while !seen.contains("event: state") {
        let n = tokio::time::timeout(PATIENCE, socket.read(&mut buffer))
            .await
            .expect("the state within the test's patience")
            .unwrap();
        assert!(n > 0, "the stream ended early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buffer[..n]));
    }
    (socket, seen)
}

async fn graceful_shutdown_completes_with_streams_open(backend: Backend) {
    let Some(store) = backend.open().await else {
        return;
    };
    let shutdown = CancellationToken::new();
    let app = App::new(
        store,
        Config {
            shutdown: shutdown.clone(),
            ..Config::default()
        },
    );
    let router: Router = app.router.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .into_future(),
    );
    let mut streams = Vec::new();
    for path in [
        "/presence/events?channel=room/1",
        "/presence/events?channel=room/1&channel=lobby/1",
        "/presence/events?channel=room/2",
    ] {
        let (socket, seen) = open_stream(addr, path).await;
        assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
        streams.push(socket);
    }
    shutdown.cancel();
    tokio::time::timeout(PATIENCE, server)
        .await
        .expect("the server stops with viewers connected")
        .unwrap()
        .unwrap();
    for mut socket in streams {
        let mut rest = Vec::new();
        tokio::time::timeout(PATIENCE, socket.read_to_end(&mut rest))
            .await
            .expect("each stream ends")
            .unwrap();
        // The chunked body's last chunk: the stream ended cleanly.
        assert!(String::from_utf8_lossy(&rest).ends_with("0\r\n\r\n"));
    }
    // The feeds stop too (their tasks see the signal on their own time).
    tokio::time::timeout(PATIENCE, async {
        while app.web.open_feeds() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the feeds stopped");
    // A stream asked for after the signal is refused, not left hanging.
    let (status, _) = app.get("/presence/events?channel=room/3", None).await;
    assert_eq!(status, axum::http::StatusCode::SERVICE_UNAVAILABLE);
}

async fn closing_the_channels_ends_the_streams(backend: Backend) {
    let Some(store) = backend.open().await else {
        return;
    };
    let app = App::new(store, Config::default());
    let mut viewer = app.events("channel=room/1", Some("viewer"), None).await;
    viewer.next().await.unwrap();
    app.web.channels().close().await;
    assert!(viewer.next().await.is_none(), "the stream ended");
}

on_every_backend!(
    graceful_shutdown_completes_with_streams_open,
    closing_the_channels_ends_the_streams,
);

/// Two app servers on one SQLite file: each store sees its own events
/// only, so the rooms re-read the file on an interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_on_one_server_see_joins_through_another_on_one_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("presence.db");
    let open = || async {
        let store = SqliteStore::open(SqliteConfig::file(&path)).await.unwrap();
        assert!(!presence::PresenceStore::events_are_complete(&store));
        Arc::new(store) as Arc<dyn presence::PresenceStore>
    };
    let (one, two) = (
        App::new(open().await, Config::default()),
        App::new(open().await, Config::default()),
    );
    let mut viewer = one.events("channel=room/1", Some("viewer"), None).await;
    let mut members = Members::default();
    members.apply(&viewer.next().await.unwrap());
    two.update(
        Some("alice"),
        json!({ "client_id": "tab", "present": ["room/1"] }),
    )
    .await;
    viewer.until(&mut members, |m| m.ids() == ["alice"]).await;
    two.update(
        Some("alice"),
        json!({ "client_id": "tab", "leave": ["room/1"] }),
    )
    .await;
    viewer.until(&mut members, |m| m.members.is_empty()).await;
}
