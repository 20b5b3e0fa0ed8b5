//! The test harness hands out a server only once it takes logins: servers
//! started side by side (as parallel test binaries do) each answer a login
//! and a query the moment `TestServer::start` returns, never "the database
//! system is starting up" (57P03).
#![cfg(feature = "testing")]

use presence_postgres::testing::{self, ServerOptions, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_started_side_by_side_take_logins_at_once() {
    if let Err(why) = testing::can_start_servers() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let starting: Vec<_> = (0..3)
        .map(|_| std::thread::spawn(|| TestServer::start(ServerOptions::default())))
        .collect();
    let servers: Vec<TestServer> = starting
        .into_iter()
        .map(|s| s.join().unwrap().unwrap())
        .collect();
    let mut ports: Vec<u16> = servers.iter().map(TestServer::port).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(
        ports.len(),
        servers.len(),
        "each server has a port of its own"
    );
    for server in &servers {
        let (client, connection) = tokio_postgres::connect(server.url(), tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", server.url()));
        tokio::spawn(connection);
        let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1);
    }
    let dirs: Vec<_> = servers.iter().map(|s| s.dir().to_owned()).collect();
    drop(servers);
    for dir in dirs {
        assert!(
            !dir.exists(),
            "{} is removed with its server",
            dir.display()
        );
    }
}
