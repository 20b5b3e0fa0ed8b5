//! The input rules: bad input gets `InvalidInput` naming the field, and
//! changes nothing.

use presence_core::{
    ConnectionId, Counts, Error, MAX_BATCH_KEYS, MAX_ID_BYTES, MemberId, Meta, PresenceKey, Topic,
};
use serde_json::json;

use crate::support::{Fixture, assert_no_pending_event, key, meta};
use crate::{Backend, Setup};

fn assert_invalid<T: std::fmt::Debug>(result: Result<T, Error>, field: &str) {
    match result {
        Err(Error::InvalidInput { field: got, reason }) => {
            assert_eq!(got, field, "the error names the field (reason: {reason})");
            assert!(!reason.is_empty(), "the error says which rule was broken");
        }
        other => panic!("expected InvalidInput for {field}, got {other:?}"),
    }
}

/// Ids that break the rules (empty, over 255 bytes, NUL) are refused when
/// built, naming the field, so no store ever sees them.
pub async fn invalid_ids_name_their_field(_backend: &dyn Backend) {
    let long = "x".repeat(MAX_ID_BYTES + 1);
    for bad in ["", "a\0b", long.as_str()] {
        assert_invalid(Topic::new(bad), "topic");
        assert_invalid(MemberId::new(bad), "member");
        assert_invalid(ConnectionId::new(bad), "connection");
        assert_invalid(PresenceKey::new(bad, "m", "c"), "topic");
        assert_invalid(PresenceKey::new("t", bad, "c"), "member");
        assert_invalid(PresenceKey::new("t", "m", bad), "connection");
    }
    for bad in [
        json!(1),
        json!("x"),
        json!([1]),
        json!({"k": "a\u{0}"}),
        json!({"a\u{0}": 1}),
    ] {
        assert_invalid(Meta::from_value(bad), "meta");
    }
}

/// Meta over the store's `max_meta_bytes` is refused by `join`,
/// `join_limited` and `update`, which change nothing and emit nothing.
pub async fn oversized_meta_changes_nothing(backend: &dyn Backend) {
    let setup = Setup {
        max_meta_bytes: 64,
        ..Setup::default()
    };
    let f = Fixture::with(backend, setup).await;
    let k = key("room", "alice", "tab");
    let small = meta(json!({"s": "ok"}));
    // Exactly at the limit is fine.
    let at_limit = meta(json!({ "s": "x".repeat(64 - r#"{"s":""}"#.len()) }));
    assert_eq!(at_limit.json_len(), 64);
    let over = meta(json!({ "s": "x".repeat(64 - r#"{"s":""}"#.len() + 1) }));

    let mut events = f.store.subscribe(&k.topic).await.unwrap();
    assert_invalid(f.store.join(&k, over.clone()).await, "meta");
    assert_invalid(f.store.join_limited(&k, over.clone(), 10).await, "meta");
    assert_eq!(f.store.count(&k.topic).await.unwrap(), Counts::default());
    assert!(f.store.topics_of(&k.member).await.unwrap().is_empty());

    let joined = f.store.join(&k, small.clone()).await.unwrap();
    f.advance(100);
    assert_invalid(f.store.update(&k, over.clone()).await, "meta");
    assert_invalid(f.store.join(&k, over).await, "meta");
    let stored = f.store.member(&k.topic, &k.member).await.unwrap().unwrap();
    assert_eq!(stored.connections[0].meta, small, "meta unchanged");
    assert_eq!(
        stored.last_seen_at, joined.entry.last_seen_at,
        "not even touched"
    );

    f.store.update(&k, at_limit.clone()).await.unwrap().unwrap();
    // The join and the update: nothing for the refused calls.
    assert!(matches!(
        crate::support::next_event(&mut events).await,
        presence_core::Event::Join { .. }
    ));
    assert!(matches!(
        crate::support::next_event(&mut events).await,
        presence_core::Event::Update { .. }
    ));
    assert_no_pending_event(&*f.store, &mut events, &k.topic).await;
}

/// A `touch_many` of more than 10,000 keys is refused, naming `keys`, and
/// touches nothing; exactly 10,000 is fine.
pub async fn oversized_batch_changes_nothing(backend: &dyn Backend) {
    let f = Fixture::open(backend).await;
    let k = key("room", "alice", "tab");
    let joined = f.store.join(&k, Meta::new()).await.unwrap();
    f.advance(100);
    let mut batch = vec![k.clone(); MAX_BATCH_KEYS + 1];
    assert_invalid(f.store.touch_many(&batch).await, "keys");
    let stored = f.store.member(&k.topic, &k.member).await.unwrap().unwrap();
    assert_eq!(
        stored.last_seen_at, joined.entry.last_seen_at,
        "nothing touched"
    );

    batch.pop();
    assert!(f.store.touch_many(&batch).await.unwrap().is_empty());
    let stored = f.store.member(&k.topic, &k.member).await.unwrap().unwrap();
    assert_eq!(stored.last_seen_at, f.now());
}
