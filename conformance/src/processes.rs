//! Helpers for multi-process tests: a workload that several OS processes
//! run against one database, the line protocol they report on, and the
//! check that what they reported adds up.
//!
//! Each process prints `join`, `leave` and `swept` lines naming keys; the
//! test collects them all and [`Report::check`]s them against the store.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command};
use std::time::Duration;

use futures::StreamExt;
use presence_core::{
    Event, EventStream, Meta, PresenceKey, PresenceStore, PresenceStoreExt, Topic,
};

use crate::support::stored_keys;

/// This test binary, run again as only its ignored test `child_process`,
/// whose output (after a first line the harness leaves unfinished) the
/// parent reads. The child learns its part from environment variables the
/// caller adds.
pub fn child_command() -> Command {
    let mut command = Command::new(std::env::current_exe().expect("the test binary"));
    command.args([
        "--exact",
        "child_process",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]);
    command
}

/// Prints `<tag> <topic> <member> <connection>` (ids hold no spaces here).
pub fn print_key(tag: &str, key: &PresenceKey) {
    println!("{tag} {} {} {}", key.topic, key.member, key.connection);
}

/// The keys of the lines `lines` tagged `tag`, in order.
pub fn tagged(lines: &[String], tag: &str) -> Vec<PresenceKey> {
    lines
        .iter()
        .filter_map(|line| line.strip_prefix(tag)?.strip_prefix(' '))
        .map(|text| {
            let mut parts = text.split(' ');
            let mut next = || parts.next().expect("three ids");
            PresenceKey::new(next(), next(), next()).expect("valid ids")
        })
        .collect()
}

/// One writer process's workload on topic `shared`: `joins` joins of its
/// own new connections spread over `members` shared members, leaving every
/// third of them, sweeping everything not seen for 30 ms every tenth, and
/// printing what each call reported.
pub async fn mixed_writer(store: &dyn PresenceStore, process: usize, joins: usize, members: usize) {
    let mut mine = Vec::new();
    for i in 0..joins {
        let key = PresenceKey::new(
            "shared",
            format!("m{}", i % members),
            format!("p{process}-{i}"),
        )
        .expect("valid ids");
        store.join(&key, Meta::new()).await.expect("join");
        print_key("join", &key);
        mine.push(key);
        if i % 3 == 2 {
            let old = mine.swap_remove(i * 7 % mine.len());
            if let Some(departure) = store.leave(&old).await.expect("leave") {
                print_key("leave", &departure.entry.key);
            }
        }
        if i % 10 == 9 {
            for departure in store
                .sweep_expired(Duration::from_millis(30))
                .await
                .expect("sweep")
            {
                print_key("swept", &departure.entry.key);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// What all the writers reported.
pub struct Report {
    /// Every key joined.
    pub joined: BTreeSet<PresenceKey>,
    /// Every key whose leave found it.
    pub left: BTreeSet<PresenceKey>,
    /// Every key a sweep reported, with how often.
    pub swept: BTreeMap<PresenceKey, usize>,
}

impl Report {
    /// Reads the writers' output lines.
    pub fn read(lines: &[String]) -> Self {
        let mut swept = BTreeMap::new();
        for key in tagged(lines, "swept") {
            *swept.entry(key).or_default() += 1;
        }
        Self {
            joined: tagged(lines, "join").into_iter().collect(),
            left: tagged(lines, "leave").into_iter().collect(),
            swept,
        }
    }

    /// Checks that no write was lost and each expiry reported once: every
    /// swept key once, none both left and swept, and `stored` (the keys in
    /// the store afterwards) exactly the joined ones not removed.
    pub fn check(&self, joins: usize, stored: &BTreeSet<PresenceKey>) {
        assert_eq!(self.joined.len(), joins, "every join was reported");
        assert!(
            !self.swept.is_empty(),
            "nothing expired: the test proves nothing"
        );
        let twice: Vec<_> = self.swept.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            twice.is_empty(),
            "expired entries reported more than once: {twice:?}"
        );
        assert!(
            self.left.iter().all(|k| !self.swept.contains_key(k)),
            "an entry both left and expired"
        );
        assert!(
            self.left
                .iter()
                .chain(self.swept.keys())
                .all(|k| self.joined.contains(k))
        );
        let expected: BTreeSet<PresenceKey> = self
            .joined
            .iter()
            .filter(|k| !self.left.contains(*k) && !self.swept.contains_key(*k))
            .cloned()
            .collect();
        assert_eq!(
            *stored, expected,
            "the store holds exactly what was joined and not removed"
        );
    }
}

/// Waits for the writer processes and reads what they reported.
pub async fn reports_of(children: Vec<Child>) -> Report {
    let outputs = tokio::task::spawn_blocking(move || {
        children
            .into_iter()
            .map(|child| {
                let output = child.wait_with_output().expect("a writer process");
                assert!(output.status.success(), "a writer process failed");
                String::from_utf8(output.stdout).expect("UTF-8 output")
            })
            .collect::<Vec<_>>()
    })
    .await
    .expect("the writers' reader");
    let lines: Vec<String> = outputs
        .iter()
        .flat_map(|o| o.lines())
        .map(str::to_owned)
        .collect();
    Report::read(&lines)
}

/// The check of a watcher in a third process, once the writers are done:
/// `events` (subscribed to `topic` before they started, with room for
/// everything) holds every join (`joins` of them) and every departure the
/// writers reported, once; each member's `first_for_member` joins and
/// `last_for_member` leaves alternate, starting with a join; the watcher's
/// view of who is present matches the store; and [`Report::check`] holds.
pub async fn check_watcher(
    store: &dyn PresenceStore,
    events: &mut EventStream,
    topic: &Topic,
    report: &Report,
    joins: usize,
) {
    // Everything the writers did reached the watcher: read up to a probe.
    let probe = PresenceKey {
        topic: topic.clone(),
        member: presence_core::MemberId::new("~probe").expect("valid id"),
        connection: presence_core::ConnectionId::new("~probe").expect("valid id"),
    };
    store.join(&probe, Meta::new()).await.expect("probe join");
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(20), events.next()).await {
            Ok(Some(Event::Join { entry, .. })) if entry.key == probe => break,
            Ok(Some(event)) => seen.push(event),
            other => panic!("the watcher stopped hearing events: {other:?}"),
        }
    }
    let mut present: BTreeMap<String, bool> = BTreeMap::new();
    let (mut joined, mut left) = (0, 0);
    for event in &seen {
        match event {
            Event::Join {
                entry,
                first_for_member,
            } => {
                joined += 1;
                if *first_for_member {
                    let was = present.insert(entry.key.member.to_string(), true);
                    assert_ne!(
                        was,
                        Some(true),
                        "{} joined twice without leaving",
                        entry.key.member
                    );
                }
            }
            Event::Leave { departure } => {
                left += 1;
                if departure.last_for_member {
                    let was = present.insert(departure.entry.key.member.to_string(), false);
                    assert_eq!(
                        was,
                        Some(true),
                        "{} left without having joined",
                        departure.entry.key.member
                    );
                }
            }
            Event::Resync => panic!("the watcher was told to resync on a healthy server"),
            _ => {}
        }
    }
    assert_eq!(
        joined, joins,
        "the watcher saw every join of both processes"
    );
    assert_eq!(
        left,
        report.left.len() + report.swept.len(),
        "and every departure, once"
    );
    let mut stored = stored_keys(store, topic).await;
    stored.remove(&probe);
    report.check(joins, &stored);
    for (member, is_present) in present {
        let in_store = stored.iter().any(|k| k.member.as_str() == member);
        assert_eq!(
            is_present, in_store,
            "the watcher's view of {member} matches the store"
        );
    }
}
