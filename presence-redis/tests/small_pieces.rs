//! The conformance properties that remove entries, on one server with
//! sweeps in pieces of two entries: a topic's mass expiry then takes many
//! pieces, and a piece that fills up takes its members' other expired
//! connections along (`lua/sweep.lua`). (The state machine property is not
//! run here: it expects one sweep's events in the contract's order, where
//! the events of a sweep in pieces follow the pieces, as the contract says.)

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use presence_core::{
    Clock, Event, ManualClock, Meta, PresenceKey, PresenceStore, Timestamp, Topic,
};
use presence_redis::{RedisStore, testing};

mod support;

conformance::suite!(@properties support::Redis {
    cluster: false,
    sweep_piece: Some(2),
};
    sweep_removes_strictly_older,
    sweep_all_reports_each_member_once,
    concurrent_sweepers_report_each_entry_once,
    leave_reports_last_for_member,
    leave_member_removes_every_connection,
    disconnect_leaves_every_topic,
    churn_keeps_member_transitions_alternating,
    undecodable_rows_never_stop_removals,
);

/// A piece that fills up takes its members' other expired connections
/// along: `a`'s two connections, last seen before and after `b`'s, leave in
/// one piece (one removal message, in the contract's order), so `a` leaves
/// whole before `b`. Split by time, the first piece would take `a`'s first
/// connection and `b`, and `a`'s second would follow alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_piece_takes_its_members_other_expired_connections() {
    if let Some(why) = testing::unavailable() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let clock = ManualClock::new(Timestamp::from_millis(1_700_000_000_000));
    let mut config = testing::store_config("pieces");
    config.sweep_piece = 2;
    config.clock = Arc::new(clock.clone());
    let store = RedisStore::connect(config).await.unwrap();
    let room = Topic::new("room").unwrap();
    let key =
        |member: &str, connection: &str| PresenceKey::new("room", member, connection).unwrap();
    for (member, connection) in [("a", "1"), ("b", "1"), ("a", "2")] {
        store
            .join(&key(member, connection), Meta::new())
            .await
            .unwrap();
        clock.advance(Duration::from_millis(1));
    }
    let mut events = store.subscribe(&room).await.unwrap();
    let swept = store.sweep(&room, clock.now()).await.unwrap();
    assert_eq!(swept.len(), 3);
    let mut left = Vec::new();
    while left.len() < 3 {
        match tokio::time::timeout(Duration::from_secs(5), events.next()).await {
            Ok(Some(Event::Leave { departure })) => left.push((
                departure.entry.key.member.to_string(),
                departure.entry.key.connection.to_string(),
                departure.last_for_member,
            )),
            other => panic!("expected departures, got {other:?}"),
        }
    }
    let expected = [("a", "1", false), ("a", "2", true), ("b", "1", true)];
    let expected: Vec<(String, String, bool)> = expected
        .iter()
        .map(|(m, c, last)| (m.to_string(), c.to_string(), *last))
        .collect();
    assert_eq!(left, expected);
    store.close().await.unwrap();
}
