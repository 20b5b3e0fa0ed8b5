//! Workloads shared by the benches and the footprint measurement, so every
//! backend is measured on the same shapes.

use presence_core::{Meta, PresenceKey, PresenceStore};

/// Key `i` of a workload spread over `topics` topics, one connection per
/// member, every member id distinct.
pub fn spread_key(i: usize, topics: usize) -> PresenceKey {
    PresenceKey::new(
        format!("topic-{}", i % topics),
        format!("member-{i}"),
        "conn",
    )
    .expect("valid bench key")
}

/// `n` keys of [`spread_key`].
pub fn spread_keys(n: usize, topics: usize) -> Vec<PresenceKey> {
    (0..n).map(|i| spread_key(i, topics)).collect()
}

/// Joins every key with empty meta.
pub async fn join_all(store: &dyn PresenceStore, keys: &[PresenceKey]) {
    for key in keys {
        store.join(key, Meta::new()).await.expect("bench join");
    }
}

/// The keys of one topic with `members` members of `connections` connections each.
pub fn room_keys(topic: &str, members: usize, connections: usize) -> Vec<PresenceKey> {
    (0..members)
        .flat_map(|m| {
            (0..connections).map(move |c| {
                PresenceKey::new(topic, format!("member-{m}"), format!("conn-{c}"))
                    .expect("valid bench key")
            })
        })
        .collect()
}

/// Joins `keys` from `tasks` concurrent tasks, each joining its share one
/// call after another, and returns how long it took.
pub async fn join_concurrently(
    store: std::sync::Arc<dyn PresenceStore>,
    keys: Vec<PresenceKey>,
    tasks: usize,
) -> std::time::Duration {
    let chunk = keys.len().div_ceil(tasks.max(1)).max(1);
    let mut shares: Vec<Vec<PresenceKey>> = Vec::new();
    let mut keys = keys.into_iter().peekable();
    while keys.peek().is_some() {
        shares.push(keys.by_ref().take(chunk).collect());
    }
    let start = std::time::Instant::now();
    let handles: Vec<_> = shares
        .into_iter()
        .map(|share| {
            let store = store.clone();
            tokio::spawn(async move { join_all(&*store, &share).await })
        })
        .collect();
    for handle in handles {
        handle.await.expect("a joining task panicked");
    }
    start.elapsed()
}
