//! Shutdown and settings of the helpers, on every backend: every helper has
//! an awaited `close` that finishes what is queued, and a bad setting is
//! refused when it is given, naming it, instead of panicking (or spinning)
//! in a background task later.

mod support;

use std::sync::Arc;
use std::time::Duration;

use conformance::support::{key, member, topic};
use futures::StreamExt;
use presence::{
    ChannelConfig, Channels, Error, Heartbeats, LiveMembers, Meta, PresenceStore, Sweeper, Tracker,
    TrackerConfig,
};
use support::{Backend, Setup};

on_every_backend!(
    tracker_close_waits_for_every_leave,
    heartbeats_close_sends_what_is_pending,
    sweeper_close_waits_for_its_sweep,
    live_members_close_ends_its_updates,
    channels_close_leaves_and_ends_streams,
);

const HOUR: Duration = Duration::from_secs(3600);

fn assert_invalid<T: std::fmt::Debug>(result: presence::Result<T>, field: &str) {
    match result {
        Err(Error::InvalidInput { field: got, .. }) => assert_eq!(got, field),
        other => panic!("expected InvalidInput naming {field}, got {other:?}"),
    }
}

/// A guard dropped just before `close` has left once `close` returns (its
/// leave is not lost with the runtime); live guards leave too, abandoned
/// ones do not; `track` afterwards fails with `Closed`.
async fn tracker_close_waits_for_every_leave(backend: &dyn Backend) {
    let store = backend.open(&Setup::default()).await;
    let room = topic("room");
    let tracker = Tracker::new(store.clone(), HOUR).unwrap();
    let dropped = tracker
        .track(key("room", "dropped", "tab"), Meta::new())
        .await
        .unwrap();
    let alive = tracker
        .track(key("room", "alive", "tab"), Meta::new())
        .await
        .unwrap();
    let crashed = tracker
        .track(key("room", "crashed", "tab"), Meta::new())
        .await
        .unwrap();
    crashed.abandon();
    drop(dropped);
    tracker.close().await;
    let left: Vec<String> = store
        .members(&room)
        .await
        .unwrap()
        .iter()
        .map(|m| m.member.to_string())
        .collect();
    assert_eq!(left, ["crashed"], "only the abandoned entry stays");
    match alive.update(Meta::new()).await {
        Err(Error::Closed { .. }) => {}
        other => panic!("a guard of a closed tracker updated: {other:?}"),
    }
    match tracker.track(key("room", "late", "tab"), Meta::new()).await {
        Err(Error::Closed { .. }) => {}
        other => panic!("a closed tracker tracked: {other:?}"),
    }
    assert!(
        store
            .member(&room, &member("late"))
            .await
            .unwrap()
            .is_none()
    );
}

/// `close` stops the interval flushes and sends the pending heartbeats.
async fn heartbeats_close_sends_what_is_pending(backend: &dyn Backend) {
    let setup = Setup::default();
    let store = backend.open(&setup).await;
    let present = key("room", "alice", "socket");
    store.join(&present, Meta::new()).await.unwrap();
    setup.clock.advance(Duration::from_secs(5));
    let heartbeats = Heartbeats::new(store.clone(), HOUR).unwrap();
    heartbeats.touch(present.clone());
    heartbeats.touch(key("room", "gone", "socket"));
    let absent = heartbeats.close().await.unwrap();
    assert_eq!(absent, [key("room", "gone", "socket")]);
    assert_eq!(heartbeats.pending(), 0);
    let alice = store
        .member(&present.topic, &present.member)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(alice.last_seen_at, presence::Clock::now(&setup.clock));
}

/// `close` lets the sweep under way finish and hand its departures over.
async fn sweeper_close_waits_for_its_sweep(backend: &dyn Backend) {
    let setup = Setup::default();
    let store = backend.open(&setup).await;
    for i in 0..50 {
        store
            .join(&key("room", &format!("m{i}"), "tab"), Meta::new())
            .await
            .unwrap();
    }
    setup.clock.advance(Duration::from_secs(120));
    let (seen, mut reports) = tokio::sync::mpsc::unbounded_channel();
    let handle = Sweeper::new(store.clone(), Duration::from_secs(60))
        .unwrap()
        .every(Duration::from_millis(5))
        .unwrap()
        .on_departures(move |gone| {
            let _ = seen.send(gone.len());
        })
        .spawn();
    let first = tokio::time::timeout(Duration::from_secs(10), reports.recv())
        .await
        .expect("a sweep within 10 s");
    assert_eq!(first, Some(50));
    handle.close().await;
    // The task is gone: its handler (and sender) were dropped with it.
    assert_eq!(reports.recv().await, None);
}

/// `close` ends every updates stream and releases the subscription.
async fn live_members_close_ends_its_updates(backend: &dyn Backend) {
    let store = backend.open(&Setup::default()).await;
    let room = topic("room");
    let live = LiveMembers::start(store.clone(), room.clone())
        .await
        .unwrap();
    let mut updates = live.updates();
    assert!(updates.next().await.is_some(), "the state comes first");
    live.close().await;
    let ended = tokio::time::timeout(Duration::from_secs(10), updates.next())
        .await
        .expect("the updates end after close");
    assert!(ended.is_none());
}

/// `close` makes the channels' guards leave, ends subscriptions, and
/// refuses later calls; the store itself stays open.
async fn channels_close_leaves_and_ends_streams(backend: &dyn Backend) {
    let store = backend.open(&Setup::default()).await;
    let channels =
        Channels::new(store.clone()).channel("/chat/", |_| async { Some(ChannelConfig::public()) });
    let alice = member("alice");
    let room = topic("/chat/1");
    let guard = channels
        .track(&alice, key("/chat/1", "alice", "tab"), Meta::new())
        .await
        .unwrap();
    let mut updates = channels.subscribe(&alice, &room).await.unwrap();
    assert!(updates.next().await.is_some(), "the state comes first");
    channels.close().await;
    assert_eq!(store.count(&room).await.unwrap().connections, 0);
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while updates.next().await.is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "the subscription ends after close");
    match channels.members(&alice, &room).await {
        Err(Error::Closed { .. }) => {}
        other => panic!("closed channels answered {other:?}"),
    }
    drop(guard);
    assert!(store.members(&room).await.is_ok(), "the store stays open");
}

#[tokio::test]
async fn bad_settings_are_refused_when_given() {
    let store: Arc<dyn PresenceStore> = Arc::new(presence::memory::MemoryStore::new());
    assert_invalid(Tracker::new(store.clone(), Duration::ZERO), "ttl");
    let config = |change: fn(&mut TrackerConfig)| {
        let mut config = TrackerConfig::new(Duration::from_secs(30));
        change(&mut config);
        Tracker::with_config(store.clone(), config)
    };
    assert_invalid(config(|c| c.heartbeats_per_ttl = 0), "heartbeats_per_ttl");
    assert_invalid(
        config(|c| {
            c.ttl = Duration::from_millis(2);
            c.heartbeats_per_ttl = 3;
        }),
        "heartbeats_per_ttl",
    );
    for jitter in [f64::NAN, -0.1, 1.0, f64::INFINITY] {
        let mut bad = TrackerConfig::new(Duration::from_secs(30));
        bad.jitter = jitter;
        assert_invalid(Tracker::with_config(store.clone(), bad), "jitter");
    }
    assert!(config(|c| c.jitter = 0.99).is_ok());

    assert_invalid(Sweeper::new(store.clone(), Duration::ZERO), "ttl");
    assert_invalid(
        Sweeper::new(store.clone(), HOUR)
            .unwrap()
            .every(Duration::ZERO),
        "every",
    );
    assert_invalid(Heartbeats::new(store.clone(), Duration::ZERO), "every");
    assert_invalid(
        Heartbeats::with_absent_handler(store.clone(), Duration::ZERO, |_| {}),
        "every",
    );
    assert_invalid(
        LiveMembers::start_refreshing(store.clone(), topic("room"), Duration::ZERO).await,
        "every",
    );

    let channels =
        Channels::new(store.clone()).channel("/chat/", |_| async { Some(ChannelConfig::public()) });
    let unknown = channels
        .clone()
        .enrich("/doc/", |_| async { Ok(Default::default()) });
    assert_invalid(unknown, "prefix");
    assert_invalid(
        channels.clone().refresh_every(Duration::ZERO),
        "refresh_every",
    );

    // A resolver handing out a zero TTL fails the call that needs it,
    // naming the setting, instead of a heartbeat task spinning.
    let zero_ttl = Channels::new(store.clone()).channel("/fast/", |_| async {
        Some(ChannelConfig {
            ttl: Duration::ZERO,
            ..ChannelConfig::public()
        })
    });
    let alice = member("alice");
    assert_invalid(
        zero_ttl
            .track(&alice, key("/fast/1", "alice", "tab"), Meta::new())
            .await,
        "ttl",
    );
}

/// Configuring a shared `Channels` used to panic; now the handle being
/// configured becomes a separate `Channels`, and its clones keep theirs.
#[tokio::test]
async fn configuring_a_clone_leaves_the_original_alone() {
    let store: Arc<dyn PresenceStore> = Arc::new(presence::memory::MemoryStore::new());
    let original =
        Channels::new(store.clone()).channel("/chat/", |_| async { Some(ChannelConfig::public()) });
    let shared = original.clone();
    let extended = shared
        .channel("/doc/", |_| async { Some(ChannelConfig::public()) })
        .enrich("/chat/", |_| async { Ok(Default::default()) })
        .unwrap();
    let alice = member("alice");
    assert!(extended.count(&alice, &topic("/doc/1")).await.is_ok());
    assert!(matches!(
        original.count(&alice, &topic("/doc/1")).await,
        Err(Error::NotFound { .. })
    ));
    assert!(original.count(&alice, &topic("/chat/1")).await.is_ok());
}
