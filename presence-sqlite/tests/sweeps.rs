//! `sweep_all` in pieces: each a turn of the writer of its own, so other
//! writes go on between them, whole topics per piece, every departure and
//! every member's last departure reported once, also with two stores (two
//! processes' worth) sweeping one file at once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use presence_core::{
    Departure, Event, ManualClock, Meta, PresenceKey, PresenceStore, Timestamp, Topic,
};
use presence_sqlite::{SqliteConfig, SqliteStore};

const START: Timestamp = Timestamp::from_millis(1_700_000_000_000);

fn key(topic: &str, member: &str, connection: &str) -> PresenceKey {
    PresenceKey::new(topic, member, connection).unwrap()
}

async fn open(path: &std::path::Path, clock: &ManualClock, piece_rows: usize) -> SqliteStore {
    let mut config = SqliteConfig::file(path);
    config.clock = Arc::new(clock.clone());
    config.sweep_piece_rows = piece_rows;
    SqliteStore::open(config).await.unwrap()
}

/// `topics` topics, each with a member of `wide` connections and one of a
/// single connection: the keys.
fn layout(topics: usize, wide: usize) -> Vec<PresenceKey> {
    (0..topics)
        .flat_map(|t| {
            let topic = format!("topic-{t:03}");
            (0..wide)
                .map(move |c| key(&topic, "alice", &format!("tab-{c:02}")))
                .chain(std::iter::once(key(&format!("topic-{t:03}"), "bob", "tab")))
        })
        .collect()
}

/// Each (topic, member) with its departures' `last_for_member` flags, in
/// the order given.
fn flags(departures: &[Departure]) -> BTreeMap<(String, String), Vec<bool>> {
    let mut flags: BTreeMap<(String, String), Vec<bool>> = BTreeMap::new();
    for d in departures {
        let k = &d.entry.key;
        flags
            .entry((k.topic.to_string(), k.member.to_string()))
            .or_default()
            .push(d.last_for_member);
    }
    flags
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_all_goes_in_pieces_of_whole_topics() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START);
    let store = Arc::new(open(&dir.path().join("p.db"), &clock, 10).await);
    // A big topic (alice with 30 connections, three times a piece) and
    // 40 small ones.
    let mut keys = layout(1, 30);
    keys.iter_mut()
        .for_each(|k| *k = key("big", k.member.as_str(), k.connection.as_str()));
    keys.extend(layout(40, 2));
    for k in &keys {
        store.join(k, Meta::new()).await.unwrap();
    }
    clock.advance(Duration::from_secs(60));
    let fresh = key("big", "carol", "tab");
    store.join(&fresh, Meta::new()).await.unwrap();

    let big = Topic::new("big").unwrap();
    let mut events = store.subscribe(&big).await.unwrap();
    let commits = store.writer_stats().commits;
    let swept = store
        .sweep_all(START + Duration::from_secs(1))
        .await
        .unwrap();
    let pieces = store.writer_stats().commits - commits;

    assert_eq!(swept.len(), keys.len(), "every expired entry once");
    let mut expected: Vec<&PresenceKey> = keys.iter().collect();
    expected.sort();
    let got: Vec<&PresenceKey> = swept.iter().map(|d| &d.entry.key).collect();
    assert_eq!(got, expected, "ordered by topic, member, connection");
    for (member, flags) in flags(&swept) {
        let (last, rest) = flags.split_last().unwrap();
        assert!(*last && !rest.contains(&true), "{member:?}: {flags:?}");
    }
    // 31 + 40 * 3 entries, about 10 per piece, a topic never split.
    assert!(pieces >= 10, "the sweep took {pieces} commits");
    let members = store.members(&big).await.unwrap();
    assert_eq!(members.len(), 1, "carol, seen since, stays");
    assert_eq!(store.count(&big).await.unwrap().connections, 1);

    // The big topic went in one piece: its 31 leaves arrive together,
    // before a join made as soon as the first of them arrived.
    let mut leaves = 0;
    let mut joined = false;
    while leaves < 31 {
        match events.next().await.unwrap() {
            Event::Leave { departure } => {
                leaves += 1;
                if !joined {
                    store
                        .join(&key("big", "alice", "new-tab"), Meta::new())
                        .await
                        .unwrap();
                    joined = true;
                }
                assert_eq!(departure.entry.key.topic, big);
            }
            other => panic!("a join landed inside the topic's sweep: {other:?}"),
        }
    }
    assert!(matches!(events.next().await, Some(Event::Join { .. })));
}

/// Two stores on one file (as two processes) sweeping at once, in small
/// pieces: together they report every entry once, and every member's last
/// departure once, on its last one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_sweepers_in_pieces_report_everything_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.db");
    let clock = ManualClock::new(START);
    let a = open(&path, &clock, 7).await;
    let b = open(&path, &clock, 7).await;
    let keys = layout(150, 3);
    for k in &keys {
        a.join(k, Meta::new()).await.unwrap();
    }
    clock.advance(Duration::from_secs(60));
    let older_than = START + Duration::from_secs(1);
    let (from_a, from_b) = tokio::join!(a.sweep_all(older_than), b.sweep_all(older_than));
    let (from_a, from_b) = (from_a.unwrap(), from_b.unwrap());
    // How the pieces interleave is up to SQLite's lock (a busy writer
    // retries after a pause, so one store may well take most of them).
    eprintln!("store a swept {}, store b {}", from_a.len(), from_b.len());
    let mut all: Vec<Departure> = from_a.into_iter().chain(from_b).collect();
    all.sort_by(|x, y| x.entry.key.cmp(&y.entry.key));
    let mut expected = keys.clone();
    expected.sort();
    let got: Vec<PresenceKey> = all.iter().map(|d| d.entry.key.clone()).collect();
    assert_eq!(got, expected, "every entry exactly once");
    for (member, flags) in flags(&all) {
        assert_eq!(
            flags.iter().filter(|last| **last).count(),
            1,
            "{member:?}: {flags:?}"
        );
        assert!(flags.last() == Some(&true), "{member:?}: {flags:?}");
    }
    a.close().await.unwrap();
    b.close().await.unwrap();
}
