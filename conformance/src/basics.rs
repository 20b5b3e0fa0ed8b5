//! The operations of the contract, one property each.

use presence_core::{Counts, Error, Meta, Reason};
use serde_json::json;

use crate::Backend;
use crate::support::{Fixture, connection, departed, key, member, meta, topic};

/// `join` creates an entry stamped with the clock, and reports it as the
/// member's first connection.
pub async fn join_creates_an_entry(backend: &dyn Backend) {
    let f = Fixture::open(backend).await;
    let k = key("room", "alice", "tab-1");
    let joined = f
        .store
        .join(&k, meta(json!({"typing": false})))
        .await
        .unwrap();
    assert_eq!(joined.entry.key, k);
    assert_eq!(joined.entry.meta, meta(json!({"typing": false})));
    assert_eq!(joined.entry.joined_at, f.now());
    assert_eq!(joined.entry.last_seen_at, f.now());
    assert!(joined.first_for_member);
    assert!(!joined.was_present);

    let second = f
        .store
        .join(&key("room", "alice", "tab-2"), Meta::new())
        .await
        .unwrap();
    assert!(!second.first_for_member, "alice was already present");
    assert!(!second.was_present);

    let stored = f.store.member(&k.topic, &k.member).await.unwrap().unwrap();
    assert_eq!(stored.connections.len(), 2);
    assert_eq!(stored.connections[0].meta, joined.entry.meta);
}

/// Joining the same key again replaces meta, refreshes `last_seen_at`,
/// keeps `joined_at` and never duplicates the entry.
pub async fn join_is_idempotent(backend: &dyn Backend) {
    let f = Fixture::open(backend).await;
    let k = key("room", "alice", "tab-1");
    let first = f.store.join(&k, meta(json!({"v": 1}))).await.unwrap();
    let joined_at = f.now();
    f.advance(1_500);
    let again = f.store.join(&k, meta(json!({"v": 2}))).await.unwrap();
    assert!(again.was_present, "a re-join must report was_present");
    assert!(
        !again.first_for_member,
        "a re-join is not the member's first connection"
    );
    assert_eq!(
        again.entry.joined_at, joined_at,
        "a re-join keeps joined_at"
    );
    assert_eq!(
        again.entry.last_seen_at,
        f.now(),
        "a re-join refreshes last_seen_at"
    );
    assert_eq!(
        again.entry.meta,
        meta(json!({"v": 2})),
        "a re-join replaces meta"
    );
    assert_ne!(first.entry, again.entry);

    f.advance(10);
    f.store.join(&k, Meta::new()).await.unwrap();
    assert_eq!(
        f.store.count(&k.topic).await.unwrap(),
        Counts {
            members: 1,
            connections: 1
        },
        "re-joins never duplicate the entry"
    );
    let members = f.store.members(&k.topic).await.unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].connections.len(), 1);
    assert_eq!(members[0].joined_at, joined_at);
    assert_eq!(members[0].connections[0].meta, Meta::new());
}

/// A member with several connections is one member whose `joined_at` is the
/// earliest connection's and `last_seen_at` the latest's.
pub async fn members_count_a_member_once(backend: &dyn Backend) {
    let f = Fixture::open(backend).await;
    let t = topic("doc:7");
    let start = f.now();
    f.store
        .join(&key("doc:7", "alice", "laptop"), Meta::new())
        .await
        .unwrap();
    f.advance(100);
    f.store
        .join(&key("doc:7", "alice", "phone"), Meta::new())
        .await
        .unwrap();
    f.advance(100);
    f.store
        .join(&key("doc:7", "alice", "tablet"), Meta::new())
        .await
        .unwrap();
    f.advance(100);
    f.store
        .touch(&key("doc:7", "alice", "phone"))
        .await
        .unwrap();

    let members = f.store.members(&t).await.unwrap();
    assert_eq!(members.len(), 1, "three connections, one member");
    let alice = &members[0];
    assert_eq!(alice.member, member("alice"));
    assert_eq!(alice.joined_at, start);
    assert_eq!(alice.last_seen_at, f.now());
    assert_eq!(alice.connections.len(), 3);
    assert_eq!(
        f.store.member(&t, &member("alice")).await.unwrap().as_ref(),
        Some(alice)
    );
    assert_eq!(f.store.member(&t, &member("bob")).await.unwrap(), None);
    assert_eq!(
        f.store.count(&t).await.unwrap(),
        Counts {
            members: 1,
            connections: 3
        }
    );
}

/// `members` orders members by `joined_at`, then member id, and connections
/// likewise by `joined_at`, then connection id.
pub async fn members_are_ordered(backend: &dyn Backend) {
    let f = Fixture::open(backend).await;
    let t = topic("room");
    // Same instant: ordered by id, byte-wise ("B" < "a" < "b").
    for (m, c) in [("b", "2"), ("a", "9"), ("B", "1"), ("a", "3")] {
        f.store.join(&key("room", m, c), Meta::new()).await.unwrap();
    }
    f.advance(5);
    // Later: after every earlier member even though its id sorts first.
    f.store
        .join(&key("room", "A", "1"), Meta::new())
        .await
        .unwrap();
    f.store
        .join(&key("room", "a", "0"), Meta::new())
        .await
        .unwrap();

    let members = f.store.members(&t).await.unwrap();
    let order: Vec<(&str, Vec<&str>)> = members
        .iter()
        .map(|m| {
            let conns = m
                .connections
                .iter()
                .map(|c| c.connection.as_str())
                .collect();
            (m.member.as_str(), conns)
        })
        .collect();
    assert_eq!(
        order,
        [
            ("B", vec!["1"]),
            ("a", vec!["3", "9", "0"]),
            ("b", vec!["2"]),
            ("A", vec!["1"]),
        ]
    );
}

/// `count` agrees with `members` through joins, leaves and sweeps.
pub async fn count_matches_members(backend: &dyn Backend) {
    let f = Fixture::open(backend).await;
    let t = topic("room");
    let check = || async {
        let members = f.store.members(&t).await.unwrap();
        let expected = Counts {
            members: members.len() as u64,
            connections: members.iter().map(|m| m.connections.len() as u64).sum(),
        };
        assert_eq!(f.store.count(&t).await.unwrap(), expected);
        expected
    };
    assert_eq!(check().await, Counts::default());
    for m in 0..5 {
        for c in 0..=m {
            f.store
                .join(
                    &key("room", &format!("m{m}"), &format!("c{c}")),
                    Meta::new(),
                )
                .await
                .unwrap();
        }
        f.advance(10);
    }
    assert_eq!(
        check().await,
        Counts {
            members: 5,
            connections: 15
        }
    );
    f.store.leave(&key("room", "m4", "c0")).await.unwrap();
    f.store.leave_member(&t, &member("m3")).await.unwrap();
    assert_eq!(
        check().await,
        Counts {
            members: 4,
            connections: 10
        }
    );
    // m0 and m1 joined before the cutoff; m2 (3 connections) and m4 (4 left)
    // after it.
    f.store
        .sweep(&t, f.now() - std::time::Duration::from_millis(35))
        .await
        .unwrap();
    assert_eq!(
        check().await,
        Counts {
            members: 2,
            connections: 7
        }
    );
    assert_eq!(
        f.store.count(&topic("elsewhere")).await.unwrap(),
        Counts::default()
    );
}

/// `update` replaces meta and refreshes `last_seen_at` of a present entry;
/// on an absent key it returns `None` and creates nothing.
pub async fn update_changes_only_present_entries(backend: &dyn Backend) {
    let f = Fixture::open(backend).await;
    let k = key("room", "alice", "tab");
    assert_eq!(
        f.store.update(&k, meta(json!({"a": 1}))).await.unwrap(),
        None
    );
    assert_eq!(f.store.count(&k.topic).await.unwrap(), Counts::default());
    assert!(f.store.members(&k.topic).await.unwrap().is_empty());
    assert!(f.store.topics_of(&k.member).await.unwrap().is_empty());

    let joined = f.store.join(&k, meta(json!({"a": 1}))).await.unwrap();
    f.advance(200);
    let updated = f
        .store
        .update(&k, meta(json!({"a": 2})))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(updated.meta, meta(json!({"a": 2})));
    assert_eq!(updated.joined_at, joined.entry.joined_at);
    assert_eq!(updated.last_seen_at, f.now());
    let stored = f.store.member(&k.topic, &k.member).await.unwrap().unwrap();
    assert_eq!(stored.connections[0].meta, updated.meta);
    // Another connection of a present member is still absent.
    assert_eq!(
        f.store
            .update(&key("room", "alice", "other"), Meta::new())
            .await
            .unwrap(),
        None
    );
    assert_eq!(f.store.count(&k.topic).await.unwrap().connections, 1);
}

/// `touch` refreshes `last_seen_at` only and says whether the entry was there.
pub async fn touch_refreshes_only_last_seen(backend: &dyn Backend) {
    let f = Fixture::open(backend).await;
    let k = key("room", "alice", "tab");
    assert!(!f.store.touch(&k).await.unwrap());
    assert_eq!(
        f.store.count(&k.topic).await.unwrap(),
        Counts::default(),
        "touch creates nothing"
    );

    let joined = f.store.join(&k, meta(json!({"keep": true}))).await.unwrap();
    f.advance(42);
    assert!(f.store.touch(&k).await.unwrap());
    let stored = f.store.member(&k.topic, &k.member).await.unwrap().unwrap();
    let conn = &stored.connections[0];
    assert_eq!(conn.last_seen_at, f.now());
    assert_eq!(conn.joined_at, joined.entry.joined_at);
    assert_eq!(conn.meta, joined.entry.meta);
}

/// `touch_many` refreshes the present keys and returns the absent ones, in
/// the order given, each once.
pub async fn touch_many_returns_absent_keys(backend: &dyn Backend) {
    let f = Fixture::open(backend).await;
    let present = [
        key("a", "m1", "c1"),
        key("b", "m1", "c1"),
        key("a", "m2", "c1"),
    ];
    for k in &present {
        f.store.join(k, Meta::new()).await.unwrap();
    }
    f.advance(1_000);
    let gone = key("a", "m3", "c1");
    let other = key("c", "m1", "c1");
    let batch = vec![
        gone.clone(),
        present[0].clone(),
        other.clone(),
        present[1].clone(),
        gone.clone(),
        present[2].clone(),
    ];
    let absent = f.store.touch_many(&batch).await.unwrap();
    assert_eq!(absent, vec![gone.clone(), other.clone()]);
    for k in &present {
        let m = f.store.member(&k.topic, &k.member).await.unwrap().unwrap();
        assert_eq!(m.last_seen_at, f.now(), "{k} was touched");
    }
    assert_eq!(
        f.store.member(&gone.topic, &gone.member).await.unwrap(),
        None
    );
    assert!(f.store.touch_many(&[]).await.unwrap().is_empty());
}

/// `leave` removes one connection; `last_for_member` says whether it was the
/// member's last in the topic.
pub async fn leave_reports_last_for_member(backend: &dyn Backend) {
    let f = Fixture::open(backend).await;
    let tab1 = key("room", "alice", "tab-1");
    let tab2 = key("room", "alice", "tab-2");
    let joined = f.store.join(&tab1, meta(json!({"x": 1}))).await.unwrap();
    f.store.join(&tab2, Meta::new()).await.unwrap();
    f.advance(7);

    let first = f.store.leave(&tab1).await.unwrap().unwrap();
    assert_eq!(
        first.entry, joined.entry,
        "the departure carries the entry as it was"
    );
    assert_eq!(first.reason, Reason::Left);
    assert!(!first.last_for_member, "alice still has tab-2");
    assert_eq!(
        f.store.leave(&tab1).await.unwrap(),
        None,
        "leaving twice finds nothing"
    );

    let last = f.store.leave(&tab2).await.unwrap().unwrap();
    assert!(last.last_for_member);
    assert!(f.store.members(&tab1.topic).await.unwrap().is_empty());
    assert_eq!(
        f.store.leave(&key("nowhere", "x", "y")).await.unwrap(),
        None
    );
}

/// `leave_member` removes all of a member's connections in one topic, with
/// exactly one `last_for_member`.
pub async fn leave_member_removes_every_connection(backend: &dyn Backend) {
    let f = Fixture::open(backend).await;
    for c in ["c3", "c1", "c2"] {
        f.store
            .join(&key("room", "alice", c), Meta::new())
            .await
            .unwrap();
    }
    f.store
        .join(&key("room", "bob", "c1"), Meta::new())
        .await
        .unwrap();
    f.store
        .join(&key("hall", "alice", "c1"), Meta::new())
        .await
        .unwrap();

    let departures = f
        .store
        .leave_member(&topic("room"), &member("alice"))
        .await
        .unwrap();
    assert_eq!(
        departed(&departures),
        [
            ("room".into(), "alice".into(), "c1".into(), false),
            ("room".into(), "alice".into(), "c2".into(), false),
            ("room".into(), "alice".into(), "c3".into(), true),
        ]
    );
    assert!(departures.iter().all(|d| d.reason == Reason::Left));
    assert_eq!(
        f.store.count(&topic("room")).await.unwrap(),
        Counts {
            members: 1,
            connections: 1
        }
    );
    assert_eq!(
        f.store.count(&topic("hall")).await.unwrap(),
        Counts {
            members: 1,
            connections: 1
        }
    );
    assert!(
        f.store
            .leave_member(&topic("room"), &member("alice"))
            .await
            .unwrap()
            .is_empty()
    );
}

/// `disconnect` removes one connection from every topic and leaves the
/// member's other connections alone.
pub async fn disconnect_leaves_every_topic(backend: &dyn Backend) {
    let f = Fixture::open(backend).await;
    for t in ["t3", "t1", "t2"] {
        f.store
            .join(&key(t, "alice", "socket-1"), Meta::new())
            .await
            .unwrap();
    }
    f.store
        .join(&key("t1", "alice", "socket-2"), Meta::new())
        .await
        .unwrap();
    f.store
        .join(&key("t2", "bob", "socket-1"), Meta::new())
        .await
        .unwrap();

    let departures = f
        .store
        .disconnect(&member("alice"), &connection("socket-1"))
        .await
        .unwrap();
    assert_eq!(
        departed(&departures),
        [
            ("t1".into(), "alice".into(), "socket-1".into(), false),
            ("t2".into(), "alice".into(), "socket-1".into(), true),
            ("t3".into(), "alice".into(), "socket-1".into(), true),
        ]
    );
    assert!(departures.iter().all(|d| d.reason == Reason::Disconnected));
    assert_eq!(
        f.store.topics_of(&member("alice")).await.unwrap(),
        [topic("t1")]
    );
    assert_eq!(
        f.store.topics_of(&member("bob")).await.unwrap(),
        [topic("t2")]
    );
    assert!(
        f.store
            .disconnect(&member("alice"), &connection("socket-1"))
            .await
            .unwrap()
            .is_empty()
    );
}

/// `sweep` removes entries seen strictly before `older_than`; one seen
/// exactly then stays.
pub async fn sweep_removes_strictly_older(backend: &dyn Backend) {
    let f = Fixture::open(backend).await;
    let old = key("room", "old", "c");
    let edge = key("room", "edge", "c");
    let fresh = key("room", "fresh", "c");
    let elsewhere = key("other", "old", "c");
    f.store.join(&old, Meta::new()).await.unwrap();
    f.store.join(&elsewhere, Meta::new()).await.unwrap();
    let cutoff = f.advance(1);
    f.store.join(&edge, Meta::new()).await.unwrap();
    f.advance(1);
    f.store.join(&fresh, Meta::new()).await.unwrap();

    let departures = f.store.sweep(&old.topic, cutoff).await.unwrap();
    assert_eq!(
        departed(&departures),
        [("room".into(), "old".into(), "c".into(), true)]
    );
    assert_eq!(departures[0].reason, Reason::Expired);
    assert_eq!(
        f.store.count(&old.topic).await.unwrap().members,
        2,
        "edge and fresh stay"
    );
    assert_eq!(
        f.store.count(&elsewhere.topic).await.unwrap().members,
        1,
        "sweep is per topic"
    );
    assert!(
        f.store.sweep(&old.topic, cutoff).await.unwrap().is_empty(),
        "nothing left to sweep"
    );

    // A touch keeps an entry alive.
    f.advance(10);
    f.store.touch(&edge).await.unwrap();
    let departures = f.store.sweep(&old.topic, f.now()).await.unwrap();
    assert_eq!(
        departed(&departures),
        [("room".into(), "fresh".into(), "c".into(), true)]
    );
}

/// `sweep_all` sweeps every topic; of several expired connections of one
/// member, exactly one carries `last_for_member`, and only if none is left.
pub async fn sweep_all_reports_each_member_once(backend: &dyn Backend) {
    let f = Fixture::open(backend).await;
    for (t, m, c) in [
        ("t2", "alice", "c2"),
        ("t2", "alice", "c1"),
        ("t1", "alice", "c1"),
        ("t1", "bob", "c1"),
        ("t1", "bob", "c2"),
    ] {
        f.store.join(&key(t, m, c), Meta::new()).await.unwrap();
    }
    f.advance(100);
    f.store.touch(&key("t1", "bob", "c2")).await.unwrap();
    f.advance(100);
    f.store
        .join(&key("t3", "carol", "c1"), Meta::new())
        .await
        .unwrap();

    let departures = f
        .store
        .sweep_all(f.now() - std::time::Duration::from_millis(150))
        .await
        .unwrap();
    assert_eq!(
        departed(&departures),
        [
            ("t1".into(), "alice".into(), "c1".into(), true),
            ("t1".into(), "bob".into(), "c1".into(), false),
            ("t2".into(), "alice".into(), "c1".into(), false),
            ("t2".into(), "alice".into(), "c2".into(), true),
        ]
    );
    assert!(departures.iter().all(|d| d.reason == Reason::Expired));
    assert_eq!(
        f.store.topics_of(&member("bob")).await.unwrap(),
        [topic("t1")]
    );
    assert!(
        f.store
            .topics_of(&member("alice"))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        f.store
            .sweep_all(f.now() - std::time::Duration::from_millis(150))
            .await
            .unwrap()
            .is_empty()
    );
    let rest = f
        .store
        .sweep_all(f.now() + std::time::Duration::from_millis(1))
        .await
        .unwrap();
    assert_eq!(rest.len(), 2, "everything left is older than the future");
}

/// `topics_of` lists each topic where the member has a connection, sorted.
pub async fn topics_of_is_sorted(backend: &dyn Backend) {
    let f = Fixture::open(backend).await;
    for (t, c) in [("b", "1"), ("a", "1"), ("c", "1"), ("a", "2"), ("B", "1")] {
        f.store
            .join(&key(t, "alice", c), Meta::new())
            .await
            .unwrap();
    }
    f.store
        .join(&key("z", "bob", "1"), Meta::new())
        .await
        .unwrap();
    let topics = f.store.topics_of(&member("alice")).await.unwrap();
    assert_eq!(topics, [topic("B"), topic("a"), topic("b"), topic("c")]);
    f.store.leave(&key("a", "alice", "1")).await.unwrap();
    assert_eq!(
        f.store.topics_of(&member("alice")).await.unwrap().len(),
        4,
        "a still has c2"
    );
    f.store.leave(&key("a", "alice", "2")).await.unwrap();
    assert_eq!(
        f.store.topics_of(&member("alice")).await.unwrap(),
        [topic("B"), topic("b"), topic("c")]
    );
    assert!(
        f.store
            .topics_of(&member("nobody"))
            .await
            .unwrap()
            .is_empty()
    );
}

/// Ids are stored byte for byte: case, spaces and injection-shaped strings
/// are plain data.
pub async fn ids_are_byte_exact(backend: &dyn Backend) {
    let f = Fixture::open(backend).await;
    let odd = [
        "Alice",
        "alice",
        " alice",
        "'; DROP TABLE entries; --",
        "%",
        "_",
        "a%_\\",
        "💬 chat",
        "\"quoted\"",
    ];
    for name in odd {
        f.store
            .join(&key(name, name, name), meta(json!({ "name": name })))
            .await
            .unwrap();
    }
    for name in odd {
        let members = f.store.members(&topic(name)).await.unwrap();
        assert_eq!(
            members.len(),
            1,
            "topic {name:?} holds exactly its own member"
        );
        assert_eq!(members[0].member.as_str(), name);
        assert_eq!(members[0].connections[0].connection.as_str(), name);
        assert_eq!(
            members[0].connections[0].meta,
            meta(json!({ "name": name }))
        );
        assert_eq!(
            f.store.topics_of(&member(name)).await.unwrap(),
            [topic(name)]
        );
    }
    // A LIKE-style pattern matches nothing but itself.
    assert_eq!(
        f.store
            .leave_member(&topic("%"), &member("%"))
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(f.store.count(&topic("_")).await.unwrap().members, 1);
    let longest = "x".repeat(presence_core::MAX_ID_BYTES);
    f.store
        .join(&key(&longest, &longest, &longest), Meta::new())
        .await
        .unwrap();
    assert_eq!(
        f.store.topics_of(&member(&longest)).await.unwrap(),
        [topic(&longest)]
    );
}

/// `join_limited` admits members until the topic holds `max_members`, then
/// refuses new members with `TopicFull` and changes nothing, while further
/// connections of present members are always let in.
pub async fn join_limited_admits_up_to_the_limit(backend: &dyn Backend) {
    let f = Fixture::open(backend).await;
    let t = topic("limited");
    for m in ["a", "b", "c"] {
        f.store
            .join_limited(&key("limited", m, "1"), Meta::new(), 3)
            .await
            .unwrap();
    }
    let mut events = f.store.subscribe(&t).await.unwrap();
    match f
        .store
        .join_limited(&key("limited", "d", "1"), Meta::new(), 3)
        .await
    {
        Err(Error::TopicFull { topic, max_members }) => {
            assert_eq!(topic, t);
            assert_eq!(max_members, 3);
        }
        other => panic!("expected TopicFull, got {other:?}"),
    }
    assert_eq!(
        f.store.count(&t).await.unwrap(),
        Counts {
            members: 3,
            connections: 3
        }
    );
    assert!(f.store.topics_of(&member("d")).await.unwrap().is_empty());
    crate::support::assert_no_pending_event(&*f.store, &mut events, &t).await;

    let second = f
        .store
        .join_limited(&key("limited", "a", "2"), Meta::new(), 3)
        .await
        .unwrap();
    assert!(!second.first_for_member);
    let rejoin = f
        .store
        .join_limited(&key("limited", "b", "1"), Meta::new(), 1)
        .await
        .unwrap();
    assert!(
        rejoin.was_present,
        "a present member gets back in even over the limit"
    );
    assert_eq!(
        f.store.count(&t).await.unwrap(),
        Counts {
            members: 3,
            connections: 4
        }
    );

    f.store.leave(&key("limited", "c", "1")).await.unwrap();
    f.store
        .join_limited(&key("limited", "d", "1"), Meta::new(), 3)
        .await
        .unwrap();
    assert!(matches!(
        f.store
            .join_limited(&key("empty", "x", "1"), Meta::new(), 0)
            .await,
        Err(Error::TopicFull { max_members: 0, .. })
    ));
    assert_eq!(
        f.store.count(&topic("empty")).await.unwrap(),
        Counts::default()
    );
}
