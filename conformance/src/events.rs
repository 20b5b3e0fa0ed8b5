//! Live events: one per committed change, in commit order; none for `touch`;
//! `Resync` instead of blocking writers.

use presence_core::{Event, Meta, Reason};
use serde_json::json;

use crate::support::{
    Fixture, assert_no_pending_event, connection, key, member, meta, next_event, next_events, topic,
};
use crate::{Backend, Setup};

/// Every change of a topic reaches its subscriber once, in commit order:
/// joins, re-joins that change meta, updates, and every kind of removal.
pub async fn events_follow_every_change(backend: &dyn Backend) {
    let f = Fixture::open(backend).await;
    let t = topic("room");
    let mut events = f.store.subscribe(&t).await.unwrap();
    let tab1 = key("room", "alice", "tab-1");
    let tab2 = key("room", "alice", "tab-2");

    let j1 = f.store.join(&tab1, Meta::new()).await.unwrap();
    let j2 = f.store.join(&tab2, Meta::new()).await.unwrap();
    f.store.join(&tab1, Meta::new()).await.unwrap(); // same meta: no event
    let rejoin = f.store.join(&tab1, meta(json!({"v": 1}))).await.unwrap();
    let updated = f
        .store
        .update(&tab2, meta(json!({"v": 2})))
        .await
        .unwrap()
        .unwrap();
    let left = f.store.leave(&tab1).await.unwrap().unwrap();
    f.store
        .join(&key("room", "bob", "c"), Meta::new())
        .await
        .unwrap();
    let gone = f.store.leave_member(&t, &member("bob")).await.unwrap();
    let dropped = f
        .store
        .disconnect(&member("alice"), &connection("tab-2"))
        .await
        .unwrap();
    f.store
        .join(&key("room", "carol", "c"), Meta::new())
        .await
        .unwrap();
    f.advance(10);
    let expired = f.store.sweep(&t, f.now()).await.unwrap();

    let expected = vec![
        Event::Join {
            entry: j1.entry,
            first_for_member: true,
        },
        Event::Join {
            entry: j2.entry,
            first_for_member: false,
        },
        Event::Update {
            entry: rejoin.entry,
        },
        Event::Update { entry: updated },
        Event::Leave { departure: left },
    ];
    assert_eq!(next_events(&mut events, expected.len()).await, expected);
    assert!(matches!(
        next_event(&mut events).await,
        Event::Join {
            first_for_member: true,
            ..
        }
    ));
    assert_eq!(
        next_event(&mut events).await,
        Event::Leave {
            departure: gone[0].clone()
        }
    );
    assert_eq!(
        next_event(&mut events).await,
        Event::Leave {
            departure: dropped[0].clone()
        }
    );
    assert!(dropped[0].last_for_member && dropped[0].reason == Reason::Disconnected);
    assert!(matches!(next_event(&mut events).await, Event::Join { .. }));
    assert_eq!(
        next_event(&mut events).await,
        Event::Leave {
            departure: expired[0].clone()
        }
    );
    assert_eq!(expired[0].reason, Reason::Expired);
    assert_no_pending_event(&*f.store, &mut events, &t).await;

    // sweep_all reports through the same events.
    f.store.join(&tab1, Meta::new()).await.unwrap();
    f.advance(10);
    let swept = f.store.sweep_all(f.now()).await.unwrap();
    assert_eq!(swept.len(), 1);
    assert!(matches!(next_event(&mut events).await, Event::Join { .. }));
    assert_eq!(
        next_event(&mut events).await,
        Event::Leave {
            departure: swept[0].clone()
        }
    );
}

/// `touch` and `touch_many` are heartbeats: no events.
pub async fn touch_emits_no_event(backend: &dyn Backend) {
    let f = Fixture::open(backend).await;
    let t = topic("room");
    let k = key("room", "alice", "tab");
    f.store.join(&k, Meta::new()).await.unwrap();
    let mut events = f.store.subscribe(&t).await.unwrap();
    for _ in 0..10 {
        f.advance(100);
        assert!(f.store.touch(&k).await.unwrap());
        f.store.touch_many(std::slice::from_ref(&k)).await.unwrap();
    }
    assert_no_pending_event(&*f.store, &mut events, &t).await;
}

/// A subscriber sees its own topic only, and several subscribers of one
/// topic each see everything.
pub async fn events_stay_in_their_topic(backend: &dyn Backend) {
    let f = Fixture::open(backend).await;
    let mut room = f.store.subscribe(&topic("room")).await.unwrap();
    let mut room_too = f.store.subscribe(&topic("room")).await.unwrap();
    let mut hall = f.store.subscribe(&topic("hall")).await.unwrap();
    f.store
        .join(&key("hall", "alice", "c"), Meta::new())
        .await
        .unwrap();
    let joined = f
        .store
        .join(&key("room", "alice", "c"), Meta::new())
        .await
        .unwrap();
    let departures = f
        .store
        .disconnect(&member("alice"), &connection("c"))
        .await
        .unwrap();
    assert_eq!(departures.len(), 2);

    for stream in [&mut room, &mut room_too] {
        assert_eq!(
            next_event(stream).await,
            Event::Join {
                entry: joined.entry.clone(),
                first_for_member: true
            }
        );
        assert_eq!(
            next_event(stream).await,
            Event::Leave {
                departure: departures[1].clone()
            }
        );
    }
    assert!(matches!(next_event(&mut hall).await, Event::Join { .. }));
    assert_eq!(
        next_event(&mut hall).await,
        Event::Leave {
            departure: departures[0].clone()
        }
    );
    assert_no_pending_event(&*f.store, &mut hall, &topic("hall")).await;
    assert_no_pending_event(&*f.store, &mut room, &topic("room")).await;
}

/// A subscriber that does not keep up gets `Resync` instead of slowing the
/// writers, and after it, events again.
pub async fn slow_subscriber_gets_resync(backend: &dyn Backend) {
    let setup = Setup {
        event_buffer: 8,
        ..Setup::default()
    };
    let f = Fixture::with(backend, setup).await;
    let t = topic("busy");
    let mut slow = f.store.subscribe(&t).await.unwrap();
    // Many more changes than the buffer holds, with nobody reading.
    for i in 0..200 {
        f.store
            .join(&key("busy", &format!("m{i}"), "c"), Meta::new())
            .await
            .unwrap();
    }
    let mut saw_resync = false;
    let mut joins_after = 0;
    // Everything the stream yields is either Resync or a Join of ours; it
    // must say Resync before the 200 changes are all delivered.
    for _ in 0..200 {
        match next_event(&mut slow).await {
            Event::Resync => {
                saw_resync = true;
                break;
            }
            Event::Join { .. } => joins_after += 1,
            other => panic!("unexpected event {other:?}"),
        }
    }
    assert!(
        saw_resync,
        "the subscriber fell behind by 192 events and was not told to resync"
    );
    assert!(joins_after < 200);
    // After the resync the stream goes on with live events.
    let late = f
        .store
        .join(&key("busy", "late", "c"), Meta::new())
        .await
        .unwrap();
    loop {
        match next_event(&mut slow).await {
            Event::Join { entry, .. } if entry == late.entry => break,
            Event::Join { .. } | Event::Resync => continue,
            other => panic!("unexpected event {other:?}"),
        }
    }
    assert_eq!(
        f.store.count(&t).await.unwrap().members,
        201,
        "no write was lost or blocked"
    );
}
