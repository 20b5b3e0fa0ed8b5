//! Faults: a server restarted under load (one server), one master's
//! connections killed under load (a cluster), a server that accepts
//! connections and never answers, a server paused mid-call. Calls fail with
//! `Error::Backend` or succeed, never hang; everything works again soon
//! after; subscribers get `Resync`, then live events.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use presence_core::{Error, Event, EventStream, Meta, PresenceKey, PresenceStore, Topic};
use presence_redis::testing::{self, Cluster, Server};
use presence_redis::{RedisConfig, RedisStore, redis};

/// Longer than any call may take: a call still running then hangs.
const HANG: Duration = Duration::from_secs(5);
/// How soon after the fault everything must work again.
const RECOVERY: Duration = Duration::from_secs(5);

fn fast(mut config: RedisConfig) -> RedisConfig {
    config.key_prefix = testing::unique_prefix("faults");
    config.command_timeout = Duration::from_secs(1);
    config.connect_timeout = Duration::from_secs(1);
    config
}

/// One call's fate: when it ended, and whether it succeeded.
type Outcome = (Instant, bool);

/// Tasks joining, touching, leaving and reading in topic `load` until
/// `stop`; panics on a hang or on an error other than `Error::Backend`.
fn start_load(
    store: Arc<RedisStore>,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<Outcome>>> {
    (0..8)
        .map(|task| {
            let (store, stop) = (store.clone(), stop.clone());
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let key = PresenceKey::new("load", format!("m{task}-{}", i % 20), "c").unwrap();
                    let call = async {
                        match i % 4 {
                            0 => store.join(&key, Meta::new()).await.map(drop),
                            1 => store.touch(&key).await.map(drop),
                            2 => store.leave(&key).await.map(drop),
                            _ => store.count(&key.topic).await.map(drop),
                        }
                    };
                    let result = tokio::time::timeout(HANG, call)
                        .await
                        .unwrap_or_else(|_| panic!("a call under load hung for {HANG:?}"));
                    match result {
                        Ok(()) => outcomes.push((Instant::now(), true)),
                        Err(Error::Backend { .. }) => outcomes.push((Instant::now(), false)),
                        Err(other) => panic!("a call under load failed with {other:?}"),
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                outcomes
            })
        })
        .collect()
}

async fn stop_load(
    stop: &AtomicBool,
    tasks: Vec<tokio::task::JoinHandle<Vec<Outcome>>>,
) -> Vec<Outcome> {
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("a load task panicked"));
    }
    all
}

/// Waits (at most [`RECOVERY`] from `since`) until a join succeeds.
async fn recovered(store: &RedisStore, since: Instant) -> Instant {
    let probe = PresenceKey::new("probe", "p", "c").unwrap();
    loop {
        if tokio::time::timeout(HANG, store.join(&probe, Meta::new()))
            .await
            .is_ok_and(|r| r.is_ok())
        {
            return Instant::now();
        }
        assert!(
            since.elapsed() < RECOVERY,
            "calls still fail {RECOVERY:?} after the fault"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The subscriber gets `Resync`, then live events again: joins made after
/// it reach it.
async fn resync_then_live(store: &RedisStore, events: &mut EventStream) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut resynced = false;
    let mut n = 0;
    loop {
        assert!(
            Instant::now() < deadline,
            "no Resync and live event within 20 s (resynced: {resynced})"
        );
        if resynced {
            n += 1;
            let _ = store
                .join(
                    &PresenceKey::new("watched", format!("late{n}"), "c").unwrap(),
                    Meta::new(),
                )
                .await;
        }
        match tokio::time::timeout(Duration::from_millis(300), events.next()).await {
            Ok(Some(Event::Resync)) => resynced = true,
            Ok(Some(Event::Join { entry, .. }))
                if resynced && entry.key.member.as_str().starts_with("late") =>
            {
                return;
            }
            Ok(Some(_)) | Err(_) => {}
            Ok(None) => panic!("the event stream ended"),
        }
    }
}

/// Checks the load's outcomes: after `recovered`, every call succeeded.
fn check(outcomes: &[Outcome], recovered: Instant) {
    assert!(!outcomes.is_empty());
    let late_failures = outcomes
        .iter()
        .filter(|(at, ok)| !ok && *at > recovered + Duration::from_millis(1500))
        .count();
    assert_eq!(
        late_failures, 0,
        "calls failed well after the store had recovered"
    );
    assert!(
        outcomes.iter().any(|(at, ok)| *ok && *at > recovered),
        "the load went on after recovery"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_costs_errors_never_hangs() {
    if !testing::can_start_servers() {
        return;
    }
    let mut server = Server::start().unwrap();
    let store = Arc::new(
        RedisStore::connect(fast(RedisConfig::new(server.url())))
            .await
            .unwrap(),
    );
    let mut events = store
        .subscribe(&Topic::new("watched").unwrap())
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(store.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;

    let down = Instant::now();
    server = tokio::task::spawn_blocking(move || {
        server.restart().expect("restart the server");
        server
    })
    .await
    .unwrap();
    let back = recovered(&store, down).await;
    resync_then_live(&store, &mut events).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let outcomes = stop_load(&stop, load).await;
    check(&outcomes, back);
    assert!(
        outcomes.iter().any(|(_, ok)| !ok),
        "the restart cost no call at all: the test proves nothing"
    );
    store.close().await.unwrap();
    drop(server);
}

/// The master serving `channel`, as a port.
fn master_of(nodes: &[String], ports: &[u16], channel: &str) -> u16 {
    let mut con = redis::Client::open(nodes[0].as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let slot: i64 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(channel)
        .query(&mut con)
        .unwrap();
    let ranges: Vec<redis::Value> = redis::cmd("CLUSTER").arg("SLOTS").query(&mut con).unwrap();
    for range in ranges {
        let redis::Value::Array(range) = range else {
            continue;
        };
        let (redis::Value::Int(start), redis::Value::Int(end), redis::Value::Array(master)) =
            (&range[0], &range[1], &range[2])
        else {
            continue;
        };
        if (*start..=*end).contains(&slot)
            && let redis::Value::Int(port) = master[1]
        {
            return ports
                .iter()
                .copied()
                .find(|p| i64::from(*p) == port)
                .unwrap();
        }
    }
    panic!("no master serves slot {slot}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_whose_clients_are_killed_costs_errors_never_hangs() {
    if !testing::can_start_servers() {
        return;
    }
    let cluster = Cluster::start().unwrap();
    let store = Arc::new(
        RedisStore::connect(fast(RedisConfig::cluster(cluster.nodes())))
            .await
            .unwrap(),
    );
    let watched = Topic::new("watched").unwrap();
    let mut events = store.subscribe(&watched).await.unwrap();
    let master = master_of(
        &cluster.nodes(),
        &cluster.ports(),
        &testing::channel(&store, &watched),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(store.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;

    let down = Instant::now();
    for kind in ["normal", "pubsub"] {
        let killed =
            testing::redis_cli(&["-p", &master.to_string(), "CLIENT", "KILL", "TYPE", kind])
                .unwrap();
        // The store's command and events connections to that master were
        // there to kill: otherwise the test proves nothing.
        let killed: usize = killed.trim().parse().unwrap_or(0);
        assert!(killed >= 1, "no {kind} connection of the store was killed");
    }
    let back = recovered(&store, down).await;
    resync_then_live(&store, &mut events).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let outcomes = stop_load(&stop, load).await;
    check(&outcomes, back);
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_server_that_never_answers_fails_within_the_timeout() {
    // Accepts connections and never says a word.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = std::thread::spawn(move || {
        let mut sockets = Vec::new();
        for socket in listener.incoming().take(8) {
            sockets.push(socket);
        }
        std::thread::sleep(Duration::from_secs(30));
    });
    let mut config = RedisConfig::new(format!("redis://127.0.0.1:{port}"));
    config.connect_timeout = Duration::from_millis(500);
    let started = Instant::now();
    let result = tokio::time::timeout(HANG, RedisStore::connect(config))
        .await
        .expect("connect hung");
    assert!(matches!(result, Err(Error::Backend { .. })), "{result:?}");
    assert!(started.elapsed() < HANG);
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_server_fails_calls_within_the_timeout_then_serves_again() {
    if !testing::can_start_servers() {
        return;
    }
    let server = Server::start().unwrap();
    let store = RedisStore::connect(fast(RedisConfig::new(server.url())))
        .await
        .unwrap();
    let key = PresenceKey::new("room", "alice", "tab").unwrap();
    store.join(&key, Meta::new()).await.unwrap();
    testing::redis_cli(&[
        "-p",
        &server.port().to_string(),
        "CLIENT",
        "PAUSE",
        "3000",
        "ALL",
    ])
    .unwrap();
    let paused = Instant::now();
    for call in 0..3 {
        let result = tokio::time::timeout(HANG, store.touch(&key))
            .await
            .expect("a call to a paused server hung");
        assert!(
            matches!(result, Err(Error::Backend { .. })),
            "call {call}: {result:?}"
        );
    }
    let mut ok = false;
    while paused.elapsed() < Duration::from_secs(3) + RECOVERY {
        if tokio::time::timeout(HANG, store.touch(&key))
            .await
            .expect("hung")
            .is_ok()
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "the store did not serve again after the pause");
    store.close().await.unwrap();
}
