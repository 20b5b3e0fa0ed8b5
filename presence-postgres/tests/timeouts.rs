//! No call waits without a bound: against a server that accepts TCP and
//! never answers, `connect` fails within its timeout naming what timed out;
//! against a real server frozen with SIGSTOP (a server of this test's own),
//! every call fails within the timeouts, and after SIGCONT everything works
//! again, events included. The generous outer timeouts only turn a hang
//! into a failure; no figure here is asserted.
#![cfg(feature = "testing")]

use std::time::Duration;

use futures::StreamExt;
use presence_core::{Error, Event, Meta, PresenceKey, PresenceStore, Topic};
use presence_postgres::testing::{self, ServerOptions, TestServer};
use presence_postgres::{PostgresConfig, PostgresStore, Timeout};

/// Far longer than any bound configured here: a call still running then hangs.
const HANG: Duration = Duration::from_secs(60);

fn timed_out(error: &Error) -> Option<&Timeout> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = cause {
        if let Some(timeout) = error.downcast_ref::<Timeout>() {
            return Some(timeout);
        }
        cause = error.source();
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_a_server_that_never_answers_fails_within_its_timeout() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    // Accepts every connection and never writes a byte.
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    for sslmode in ["disable", "prefer"] {
        let config = PostgresConfig::from_url(&format!(
            "postgres://app:pw@127.0.0.1:{port}/app?connect_timeout=1&sslmode={sslmode}"
        ))
        .unwrap();
        let error = tokio::time::timeout(HANG, PostgresStore::connect(config))
            .await
            .expect("connect to a silent server hung")
            .unwrap_err();
        assert!(
            matches!(
                error,
                Error::Backend {
                    backend: "postgres",
                    ..
                }
            ),
            "{error:?}"
        );
        let timeout =
            timed_out(&error).unwrap_or_else(|| panic!("not a timeout: {}", error.chain()));
        assert_eq!(
            timeout.what,
            "connecting to the server",
            "{}",
            error.chain()
        );
        assert_eq!(timeout.after, Duration::from_secs(1));
        assert!(
            error
                .chain()
                .to_string()
                .contains("connecting to the server timed out after 1s"),
            "{}",
            error.chain()
        );
        assert!(
            !format!("{error:?}").contains("pw@"),
            "no password in {error:?}"
        );
    }
    holder.abort();
}

/// Resumes the server when dropped, so a failing test never leaves it frozen.
struct Frozen<'a>(&'a TestServer);

impl<'a> Frozen<'a> {
    fn new(server: &'a TestServer) -> Self {
        server.signal("STOP").expect("SIGSTOP the server");
        Self(server)
    }
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        let _ = self.0.signal("CONT");
    }
}

async fn must_time_out<T: std::fmt::Debug>(
    call: &str,
    result: impl std::future::Future<Output = presence_core::Result<T>>,
) {
    let result = tokio::time::timeout(HANG, result)
        .await
        .unwrap_or_else(|_| panic!("{call} against a frozen server hung"));
    match result {
        Err(error @ Error::Backend { .. }) => {
            assert!(
                timed_out(&error).is_some(),
                "{call} failed, but not by a timeout: {}",
                error.chain()
            );
        }
        other => panic!("{call} against a frozen server gave {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_fails_calls_within_the_timeouts_and_recovers() {
    if let Err(why) = testing::can_start_servers() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let server = TestServer::start(ServerOptions::default()).unwrap();
    let mut config = PostgresConfig::from_url(&format!(
        "{}?connect_timeout=1&call_timeout=1&pool_wait_timeout=1&pool_recycle_timeout=1\
         &subscribe_timeout=1&listener_ping_interval=1",
        server.url()
    ))
    .unwrap();
    config.schema = testing::unique_schema("frozen");
    config.pool_size = 2;
    let store = PostgresStore::connect(config).await.unwrap();
    let room = Topic::new("room").unwrap();
    let key = |member: &str| PresenceKey::new("room", member, "c").unwrap();
    store.join(&key("before"), Meta::new()).await.unwrap();

    {
        let _frozen = Frozen::new(&server);
        must_time_out("join", store.join(&key("during"), Meta::new())).await;
        must_time_out("touch", store.touch(&key("before"))).await;
        must_time_out("members", store.members(&room)).await;
        must_time_out("count", store.count(&room)).await;
        must_time_out("leave", store.leave(&key("before"))).await;
        must_time_out("sweep_all", store.sweep_all(store.clock().now())).await;
        must_time_out("subscribe", store.subscribe(&room).map_ok_stream()).await;
    }

    // Resumed: calls work again (the first may still meet a connection
    // that was being replaced), and so do events.
    let mut recovered = None;
    for _ in 0..50 {
        match tokio::time::timeout(HANG, store.join(&key("after"), Meta::new()))
            .await
            .expect("a join after SIGCONT hung")
        {
            Ok(joined) => {
                recovered = Some(joined);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    recovered.expect("joins work again after SIGCONT");
    let mut events = tokio::time::timeout(HANG, store.subscribe(&room))
        .await
        .expect("subscribe after SIGCONT hung")
        .expect("subscribe after SIGCONT");
    let members: Vec<String> = store
        .members(&room)
        .await
        .unwrap()
        .iter()
        .map(|m| m.member.to_string())
        .collect();
    assert!(members.contains(&"before".to_owned()) && members.contains(&"after".to_owned()));
    let joined = store.join(&key("last"), Meta::new()).await.unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(20), events.next()).await {
            Ok(Some(Event::Join { entry, .. })) if entry == joined.entry => break,
            Ok(Some(_)) => continue,
            other => panic!("events did not flow after SIGCONT: {other:?}"),
        }
    }
    store.close().await.unwrap();
}

/// `subscribe`'s stream is not `Debug`; the test only needs the outcome.
trait MapOkStream {
    fn map_ok_stream(self) -> impl std::future::Future<Output = presence_core::Result<()>>;
}

impl<F> MapOkStream for F
where
    F: std::future::Future<Output = presence_core::Result<presence_core::EventStream>>,
{
    async fn map_ok_stream(self) -> presence_core::Result<()> {
        self.await.map(|_| ())
    }
}
