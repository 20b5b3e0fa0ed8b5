//! Channel policies on every backend: hidden channels, count-only rooms,
//! exact member limits, cached resolvers, enrichment once per change, TTLs.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use conformance::support::{key, member, meta, topic};
use futures::StreamExt;
use presence::{
    Access, ChannelConfig, ChannelUpdate, ChannelUpdates, Channels, Error, MemberId, Meta,
    PresenceStore, serde_json::json,
};
use support::{Backend, Setup};

on_every_backend!(
    denied_view_looks_like_a_missing_channel,
    entering_needs_permission_and_ones_own_key,
    count_only_hides_identities,
    max_members_holds_under_contention,
    resolver_runs_once_per_cache_period,
    enrichment_runs_once_per_change,
    failed_enrichment_is_retried_with_the_whole_list,
    topics_enrich_side_by_side,
    channel_ttls_drive_the_sweep,
);

/// Staff may see and enter `/private/...`; `/private/missing` does not exist.
fn private(store: Arc<dyn PresenceStore>) -> Channels {
    Channels::new(store).channel("/private/", |topic| async move {
        if topic.as_str() == "/private/missing" {
            return None;
        }
        let staff = Access::only(["alice", "bob"]).unwrap();
        Some(ChannelConfig {
            view: staff.clone(),
            enter: staff,
            ..ChannelConfig::public()
        })
    })
}

/// Every checked call's error for `viewer` on `topic`, as text.
async fn refusals(channels: &Channels, viewer: &str, topic_name: &str) -> Vec<String> {
    let viewer = member(viewer);
    let topic = topic(topic_name);
    let key = presence::PresenceKey {
        topic: topic.clone(),
        member: viewer.clone(),
        connection: "tab".try_into().unwrap(),
    };
    vec![
        format!("{:?}", channels.members(&viewer, &topic).await.unwrap_err()),
        format!("{:?}", channels.count(&viewer, &topic).await.unwrap_err()),
        format!(
            "{:?}",
            channels.subscribe(&viewer, &topic).await.err().unwrap()
        ),
        format!(
            "{:?}",
            channels.join(&viewer, &key, Meta::new()).await.unwrap_err()
        ),
        format!(
            "{:?}",
            channels
                .track(&viewer, key.clone(), Meta::new())
                .await
                .unwrap_err()
        ),
        format!("{:?}", channels.leave(&viewer, &key).await.unwrap_err()),
        format!("{:?}", channels.config(&viewer, &topic).await.unwrap_err()),
    ]
}

async fn denied_view_looks_like_a_missing_channel(backend: &dyn Backend) {
    let store = backend.open(&Setup::default()).await;
    let channels = private(store.clone());
    channels
        .join(
            &member("alice"),
            &key("/private/room", "alice", "tab"),
            Meta::new(),
        )
        .await
        .unwrap();

    // A stranger asking about an existing private room, a room the
    // resolver says does not exist, and a topic no prefix matches: the
    // same error, word for word, on every call.
    let hidden = refusals(&channels, "mallory", "/private/room").await;
    let missing = Channels::new(store.clone()).channel("/private/", |_| async { None });
    let missing = refusals(&missing, "mallory", "/private/room").await;
    let unrouted = refusals(&Channels::new(store.clone()), "mallory", "/private/room").await;
    assert_eq!(hidden, missing);
    assert_eq!(hidden, unrouted);
    assert!(hidden[0].starts_with("NotFound"), "{}", hidden[0]);
    let also_missing = refusals(&channels, "alice", "/private/missing").await;
    assert!(
        also_missing.iter().all(|e| e.starts_with("NotFound")),
        "{also_missing:?}"
    );

    // The stranger's attempts changed nothing.
    let counts = store.count(&topic("/private/room")).await.unwrap();
    assert_eq!((counts.members, counts.connections), (1, 1));
    assert!(
        store
            .topics_of(&member("mallory"))
            .await
            .unwrap()
            .is_empty()
    );

    // Staff see it.
    let seen = channels
        .members(&member("bob"), &topic("/private/room"))
        .await
        .unwrap();
    assert_eq!(seen.members.len(), 1);
    assert_eq!(seen.members[0].member.member.as_str(), "alice");
}

async fn entering_needs_permission_and_ones_own_key(backend: &dyn Backend) {
    let store = backend.open(&Setup::default()).await;
    // Anyone may watch the stage; only performers may enter it.
    let channels = Channels::new(store.clone()).channel("/stage/", |_| async {
        Some(ChannelConfig {
            enter: Access::check(|m: &MemberId| m.as_str().starts_with("performer-")),
            ..ChannelConfig::public()
        })
    });
    let stage = topic("/stage/main");
    let audience = member("audience-1");
    let err = channels
        .join(
            &audience,
            &key("/stage/main", "audience-1", "tab"),
            Meta::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Forbidden { .. }), "{err:?}");
    let performer = member("performer-1");
    let err = channels
        .join(
            &performer,
            &key("/stage/main", "performer-2", "tab"),
            Meta::new(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Forbidden { .. }),
        "acting as another: {err:?}"
    );
    assert_eq!(
        store.count(&stage).await.unwrap().members,
        0,
        "refusals change nothing"
    );

    let own = key("/stage/main", "performer-1", "tab");
    channels.join(&performer, &own, Meta::new()).await.unwrap();
    assert_eq!(channels.count(&audience, &stage).await.unwrap().members, 1);
    let err = channels.leave(&audience, &own).await.unwrap_err();
    assert!(matches!(err, Error::Forbidden { .. }), "{err:?}");
    let left = channels.leave(&performer, &own).await.unwrap();
    assert!(left.unwrap().last_for_member);
}

async fn count_only_hides_identities(backend: &dyn Backend) {
    let store = backend.open(&Setup::default()).await;
    let channels = Channels::new(store.clone()).channel("/topic/", |_| async {
        Some(ChannelConfig {
            count_only: true,
            ..ChannelConfig::public()
        })
    });
    let room = topic("/topic/7/replying");
    for name in ["alice", "bob"] {
        let key = key("/topic/7/replying", name, "tab");
        channels.join(&key.member, &key, Meta::new()).await.unwrap();
    }
    let viewer = member("carol");
    let seen = channels.members(&viewer, &room).await.unwrap();
    assert!(seen.count_only);
    assert!(seen.members.is_empty());
    assert_eq!((seen.counts.members, seen.counts.connections), (2, 2));
    assert_eq!(channels.count(&viewer, &room).await.unwrap().members, 2);

    let mut updates = channels.subscribe(&viewer, &room).await.unwrap();
    let mut seen_text = Vec::new();
    let first = next(&mut updates).await;
    assert!(matches!(first, ChannelUpdate::State { ref members, .. } if members.is_empty()));
    assert_eq!(first.counts().members, 2);
    seen_text.push(presence::serde_json::to_string(&first).unwrap());

    let dave = key("/topic/7/replying", "dave", "tab");
    channels
        .join(&dave.member, &dave, Meta::new())
        .await
        .unwrap();
    let diff = next(&mut updates).await;
    assert_eq!(diff.counts().members, 3);
    seen_text.push(presence::serde_json::to_string(&diff).unwrap());
    channels.leave(&dave.member, &dave).await.unwrap();
    let diff = next(&mut updates).await;
    assert_eq!(diff.counts().members, 2);
    seen_text.push(presence::serde_json::to_string(&diff).unwrap());
    for text in &seen_text {
        for name in ["alice", "bob", "dave"] {
            assert!(!text.contains(name), "{name} leaked in {text}");
        }
    }
    let serialized = presence::serde_json::to_string(&seen).unwrap();
    assert!(!serialized.contains("alice"), "{serialized}");
}

async fn next(updates: &mut ChannelUpdates) -> ChannelUpdate {
    tokio::time::timeout(Duration::from_secs(10), updates.next())
        .await
        .expect("an update within 10 s")
        .expect("the stream goes on")
}

async fn max_members_holds_under_contention(backend: &dyn Backend) {
    let store = backend.open(&Setup::default()).await;
    let channels = Channels::new(store.clone()).channel("/room/", |_| async {
        Some(ChannelConfig {
            max_members: Some(10),
            ..ChannelConfig::public()
        })
    });
    let room = topic("/room/limited");
    let joins = (0..50).map(|i| {
        let channels = channels.clone();
        tokio::spawn(async move {
            let key = key("/room/limited", &format!("m{i:02}"), "tab-1");
            channels.join(&key.member, &key, Meta::new()).await
        })
    });
    let results = futures::future::join_all(joins).await;
    let mut admitted = Vec::new();
    let mut full = 0;
    for (i, result) in results.into_iter().enumerate() {
        match result.unwrap() {
            Ok(_) => admitted.push(i),
            Err(Error::TopicFull { max_members, .. }) => {
                assert_eq!(max_members, 10);
                full += 1;
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((admitted.len(), full), (10, 40));
    let counts = store.count(&room).await.unwrap();
    assert_eq!((counts.members, counts.connections), (10, 10));

    // A second connection of a present member does not count.
    let second = key("/room/limited", &format!("m{:02}", admitted[0]), "tab-2");
    channels
        .join(&second.member, &second, Meta::new())
        .await
        .unwrap();
    let counts = store.count(&room).await.unwrap();
    assert_eq!((counts.members, counts.connections), (10, 11));

    // A tracked newcomer is refused too; a leave makes room for it.
    let newcomer = key("/room/limited", "newcomer", "tab");
    let err = channels
        .track(&newcomer.member, newcomer.clone(), Meta::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::TopicFull { .. }), "{err:?}");
    let leaving = key("/room/limited", &format!("m{:02}", admitted[1]), "tab-1");
    channels.leave(&leaving.member, &leaving).await.unwrap();
    let guard = channels
        .track(&newcomer.member, newcomer.clone(), Meta::new())
        .await
        .unwrap();
    assert!(guard.joined().first_for_member);
    assert_eq!(store.count(&room).await.unwrap().members, 10);
}

async fn resolver_runs_once_per_cache_period(backend: &dyn Backend) {
    let setup = Setup::default();
    let clock = setup.clock.clone();
    let store = backend.open(&setup).await;
    let calls = Arc::new(AtomicU64::new(0));
    let channels = {
        let calls = calls.clone();
        Channels::new(store.clone())
            .cache_for(Duration::from_secs(120))
            .channel("doc:", move |topic| {
                let calls = calls.clone();
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    // Give concurrent callers time to pile up.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    (topic.as_str() != "doc:gone").then(ChannelConfig::public)
                }
            })
    };
    let asks = (0..50).map(|i| {
        let channels = channels.clone();
        async move {
            let viewer = member(&format!("viewer-{i}"));
            let doc = if i % 2 == 0 { "doc:1" } else { "doc:gone" };
            channels.count(&viewer, &topic(doc)).await.map(drop)
        }
    });
    let results = futures::future::join_all(asks).await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 25);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "once per topic, 'no such channel' included"
    );

    clock.advance(Duration::from_secs(119));
    channels.count(&member("v"), &topic("doc:1")).await.unwrap();
    channels
        .count(&member("v"), &topic("doc:gone"))
        .await
        .unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 2, "still within the period");

    clock.advance(Duration::from_secs(2));
    channels.count(&member("v"), &topic("doc:1")).await.unwrap();
    channels.count(&member("w"), &topic("doc:1")).await.unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "once more after the period"
    );
}

async fn enrichment_runs_once_per_change(backend: &dyn Backend) {
    let store = backend.open(&Setup::default()).await;
    let batches: Arc<std::sync::Mutex<Vec<Vec<String>>>> = Arc::default();
    let channels = {
        let batches = batches.clone();
        Channels::new(store.clone())
            .channel("/chat/", |_| async { Some(ChannelConfig::public()) })
            .enrich("/chat/", move |ids: Vec<MemberId>| {
                let batches = batches.clone();
                async move {
                    batches
                        .lock()
                        .unwrap()
                        .push(ids.iter().map(|id| id.to_string()).collect());
                    Ok(ids
                        .into_iter()
                        .map(|id| {
                            let name = id.as_str().to_uppercase();
                            (id, json!({ "name": name }))
                        })
                        .collect::<HashMap<_, _>>())
                }
            })
            .unwrap()
    };
    let calls = || batches.lock().unwrap().len();
    let room = topic("/chat/1");
    for name in ["alice", "bob", "carol"] {
        let key = key("/chat/1", name, "tab");
        channels.join(&key.member, &key, Meta::new()).await.unwrap();
    }

    // Twenty viewers list the room at once: one enrichment, of all three.
    let lists = futures::future::join_all((0..20).map(|i| {
        let channels = channels.clone();
        let room = room.clone();
        async move {
            channels
                .members(&member(&format!("viewer-{i}")), &room)
                .await
                .unwrap()
        }
    }))
    .await;
    assert_eq!(calls(), 1);
    assert_eq!(batches.lock().unwrap()[0].len(), 3);
    for list in &lists {
        assert_eq!(list.members.len(), 3);
        assert_eq!(list.members[0].profile, json!({"name": "ALICE"}));
    }

    // A change: the next listings enrich the newcomer only, once.
    let dave = key("/chat/1", "dave", "tab");
    channels
        .join(&dave.member, &dave, Meta::new())
        .await
        .unwrap();
    for i in 0..20 {
        let list = channels
            .members(&member(&format!("viewer-{i}")), &room)
            .await
            .unwrap();
        assert_eq!(list.members.len(), 4);
    }
    assert_eq!(calls(), 2);
    assert_eq!(batches.lock().unwrap()[1], ["dave"]);

    // Twenty subscribers share one enrichment per change.
    let mut subscribers = Vec::new();
    for i in 0..20 {
        let mut updates = channels
            .subscribe(&member(&format!("viewer-{i}")), &room)
            .await
            .unwrap();
        let ChannelUpdate::State { members, .. } = next(&mut updates).await else {
            panic!("the state comes first");
        };
        assert_eq!(members.len(), 4);
        assert_eq!(members[3].profile, json!({"name": "DAVE"}));
        subscribers.push(updates);
    }
    assert_eq!(calls(), 2, "everyone was already described");
    let erin = key("/chat/1", "erin", "tab");
    channels
        .join(&erin.member, &erin, Meta::new())
        .await
        .unwrap();
    for updates in &mut subscribers {
        let ChannelUpdate::Diff { joins, .. } = next(updates).await else {
            panic!("a diff");
        };
        assert_eq!(joins.len(), 1);
        assert_eq!(joins[0].profile, json!({"name": "ERIN"}));
    }
    assert_eq!(calls(), 3, "one enrichment for twenty subscribers");
    assert_eq!(batches.lock().unwrap()[2], ["erin"]);

    // A meta change of a described member needs no enrichment.
    store
        .update(
            &key("/chat/1", "alice", "tab"),
            meta(json!({"typing": true})),
        )
        .await
        .unwrap();
    for updates in &mut subscribers {
        let ChannelUpdate::Diff { joins, .. } = next(updates).await else {
            panic!("a diff");
        };
        assert_eq!(
            joins[0].member.connections[0].meta,
            meta(json!({"typing": true}))
        );
        assert_eq!(joins[0].profile, json!({"name": "ALICE"}));
    }
    assert_eq!(calls(), 3);
}

async fn channel_ttls_drive_the_sweep(backend: &dyn Backend) {
    let setup = Setup::default();
    let clock = setup.clock.clone();
    let store = backend.open(&setup).await;
    let channels = Channels::new(store.clone())
        .channel("/fast/", |_| async {
            Some(ChannelConfig {
                ttl: Duration::from_secs(10),
                ..ChannelConfig::public()
            })
        })
        .channel("/slow/", |_| async { Some(ChannelConfig::public()) });
    for topic_name in ["/fast/a", "/slow/a"] {
        let key = key(topic_name, "alice", "tab");
        channels.join(&key.member, &key, Meta::new()).await.unwrap();
    }
    let outside = key("/other/a", "alice", "tab");
    store.join(&outside, Meta::new()).await.unwrap();

    clock.advance(Duration::from_secs(20));
    let gone = channels
        .sweep_expired(Duration::from_secs(60))
        .await
        .unwrap();
    let gone: Vec<String> = gone.iter().map(|d| d.entry.key.topic.to_string()).collect();
    assert_eq!(gone, ["/fast/a"]);

    clock.advance(Duration::from_secs(45));
    let gone = channels
        .sweep_expired(Duration::from_secs(60))
        .await
        .unwrap();
    let mut gone: Vec<String> = gone.iter().map(|d| d.entry.key.topic.to_string()).collect();
    gone.sort();
    assert_eq!(gone, ["/other/a", "/slow/a"]);

    // An emptied fast topic entered again is swept on its own TTL again.
    let again = key("/fast/a", "bob", "tab");
    channels
        .join(&again.member, &again, Meta::new())
        .await
        .unwrap();
    clock.advance(Duration::from_secs(20));
    let gone = channels
        .sweep_expired(Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].entry.key, again);
}

async fn failed_enrichment_is_retried_with_the_whole_list(backend: &dyn Backend) {
    let store = backend.open(&Setup::default()).await;
    let failures_left = Arc::new(AtomicU64::new(0));
    let channels = {
        let failures_left = failures_left.clone();
        Channels::new(store.clone())
            .channel("/chat/", |_| async { Some(ChannelConfig::public()) })
            .enrich("/chat/", move |ids: Vec<MemberId>| {
                let failing = failures_left
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                async move {
                    if failing {
                        return Err(Error::invalid("member", "the profile service is down"));
                    }
                    Ok(ids
                        .into_iter()
                        .map(|id| {
                            let name = id.to_string();
                            (id, json!({ "name": name }))
                        })
                        .collect::<HashMap<_, _>>())
                }
            })
            .unwrap()
    };
    let room = topic("/chat/2");
    let mut updates = channels.subscribe(&member("viewer"), &room).await.unwrap();
    assert_eq!(next(&mut updates).await.counts().members, 0);

    failures_left.store(2, Ordering::SeqCst);
    let alice = key("/chat/2", "alice", "tab");
    channels
        .join(&alice.member, &alice, Meta::new())
        .await
        .unwrap();
    let ChannelUpdate::State { members, counts } = next(&mut updates).await else {
        panic!("after failed enrichments, the whole list");
    };
    assert_eq!(counts.members, 1);
    assert_eq!(members[0].profile, json!({"name": "alice"}));
    assert_eq!(failures_left.load(Ordering::SeqCst), 0);
}

async fn topics_enrich_side_by_side(backend: &dyn Backend) {
    let store = backend.open(&Setup::default()).await;
    // Each call waits until another is in flight: enrichments of two
    // topics must run at once, not one after the other.
    let both = Arc::new(tokio::sync::Barrier::new(2));
    let channels = {
        let both = both.clone();
        Channels::new(store.clone())
            .channel("/doc/", |_| async { Some(ChannelConfig::public()) })
            .enrich("/doc/", move |ids: Vec<MemberId>| {
                let both = both.clone();
                async move {
                    tokio::time::timeout(Duration::from_secs(5), both.wait())
                        .await
                        .map_err(|_| Error::invalid("member", "enrichments ran one at a time"))?;
                    Ok(ids
                        .into_iter()
                        .map(|id| (id, json!({})))
                        .collect::<HashMap<_, _>>())
                }
            })
            .unwrap()
    };
    for doc in ["/doc/a", "/doc/b"] {
        let key = key(doc, "alice", "tab");
        channels.join(&key.member, &key, Meta::new()).await.unwrap();
    }
    // Different members per topic, so neither can use the other's record.
    let bob = key("/doc/b", "bob", "tab");
    channels.join(&bob.member, &bob, Meta::new()).await.unwrap();
    let viewer = member("viewer");
    let (doc_a, doc_b) = (topic("/doc/a"), topic("/doc/b"));
    let (a, b) = tokio::join!(
        channels.members(&viewer, &doc_a),
        channels.members(&viewer, &doc_b),
    );
    assert_eq!(a.unwrap().members.len(), 1);
    assert_eq!(b.unwrap().members.len(), 2);
}
