//! How long the Postgres store takes to fail against a server that does
//! not answer: `connect` to a TCP port that accepts and never replies, and
//! calls on a store whose server was frozen with SIGSTOP (a server of this
//! program's own), with the default timeouts and with 1 s ones. Run with
//! `cargo run --release -p benches --bin postgres_time_to_error`.

use std::future::Future;
use std::time::{Duration, Instant};

use presence_core::{Meta, PresenceKey, PresenceStore, Topic};
use presence_postgres::testing::{ServerOptions, TestServer};
use presence_postgres::{PostgresConfig, PostgresStore};

fn main() {
    let rt = benches::runtime();
    rt.block_on(async {
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = silent.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = silent.accept().await {
                held.push(socket);
            }
        });
        let url = format!("postgres://app@127.0.0.1:{port}/app");
        println!("what | timeouts | time to the error | error");
        for (label, query) in [
            ("defaults", ""),
            ("connect_timeout=1", "?connect_timeout=1"),
        ] {
            let config = PostgresConfig::from_url(&format!("{url}{query}")).unwrap();
            timed(
                "connect to a silent port",
                label,
                PostgresStore::connect(config),
            )
            .await;
        }

        let server = TestServer::start(ServerOptions::default()).unwrap();
        for (label, query) in [
            ("defaults", ""),
            (
                "call_timeout=1&connect_timeout=1",
                "?call_timeout=1&connect_timeout=1",
            ),
        ] {
            let mut config = PostgresConfig::from_url(&format!("{}{query}", server.url())).unwrap();
            config.schema = presence_postgres::testing::unique_schema("time_to_error");
            let store = PostgresStore::connect(config).await.unwrap();
            let key = PresenceKey::new("room", "a", "c").unwrap();
            store.join(&key, Meta::new()).await.unwrap();
            server.signal("STOP").unwrap();
            timed("join, frozen server", label, store.join(&key, Meta::new())).await;
            timed(
                "members, frozen server",
                label,
                store.members(&Topic::new("room").unwrap()),
            )
            .await;
            server.signal("CONT").unwrap();
            store.close().await.unwrap();
        }
    });
}

async fn timed<T>(what: &str, label: &str, call: impl Future<Output = presence_core::Result<T>>) {
    let began = Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(120), call).await;
    let took = began.elapsed();
    let error = match outcome {
        Ok(Ok(_)) => "succeeded".to_owned(),
        Ok(Err(error)) => error.chain().to_string(),
        Err(_) => "still waiting after 120 s".to_owned(),
    };
    println!("{what} | {label} | {:.2} s | {error}", took.as_secs_f64());
}
