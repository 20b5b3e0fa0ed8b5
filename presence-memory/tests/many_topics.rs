//! One member in very many topics: every way it leaves takes time linear in
//! its topics (the member index used to search a list per departure, so
//! 160,000 topics took 28 s to sweep and a million never finished).

use std::sync::Arc;
use std::time::Duration;

use presence_core::{
    Clock, ManualClock, MemberId, Meta, PresenceKey, PresenceStore, Timestamp, Topic,
};
use presence_memory::{MemoryConfig, MemoryStore};

const TOPICS: usize = 200_000;
/// Far more than the linear index needs even unoptimized; the quadratic one
/// needed minutes.
const BOUND: Duration = Duration::from_secs(120);

/// Runs `call` on a thread of its own and waits at most [`BOUND`] for it: a
/// memory-store call never yields, so an async timeout could not stop it.
fn bounded<T: Send + 'static>(
    what: &str,
    call: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let _ = done.send(runtime.block_on(call));
    });
    result
        .recv_timeout(BOUND)
        .unwrap_or_else(|_| panic!("{what} did not finish within {BOUND:?}"))
}

fn store() -> (MemoryStore, ManualClock) {
    let clock = ManualClock::new(Timestamp::from_millis(1_000_000));
    let store = MemoryStore::with_config(MemoryConfig {
        clock: Arc::new(clock.clone()),
        ..MemoryConfig::default()
    });
    (store, clock)
}

async fn fill(store: &MemoryStore, connection: &str) {
    for i in 0..TOPICS {
        let key = PresenceKey::new(format!("room/{i}"), "alice", connection).unwrap();
        store.join(&key, Meta::new()).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_in_200k_topics_is_swept_in_linear_time() {
    let (store, clock) = store();
    fill(&store, "tab").await;
    let alice = MemberId::new("alice").unwrap();
    assert_eq!(store.topics_of(&alice).await.unwrap().len(), TOPICS);
    clock.advance(Duration::from_secs(60));
    let sweeper = store.clone();
    let now = clock.now();
    let swept = bounded("the sweep", async move { sweeper.sweep_all(now).await }).unwrap();
    assert_eq!(swept.len(), TOPICS);
    assert!(swept.iter().all(|d| d.last_for_member));
    assert!(store.topics_of(&alice).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_in_200k_topics_disconnects_in_linear_time() {
    let (store, _clock) = store();
    fill(&store, "tab").await;
    // A second connection in one topic keeps that topic in the index.
    let kept = PresenceKey::new("room/7", "alice", "phone").unwrap();
    store.join(&kept, Meta::new()).await.unwrap();
    let alice = MemberId::new("alice").unwrap();
    let disconnecting = store.clone();
    let member = alice.clone();
    let gone = bounded("the disconnect", async move {
        disconnecting
            .disconnect(&member, &"tab".try_into().unwrap())
            .await
    })
    .unwrap();
    assert_eq!(gone.len(), TOPICS);
    assert_eq!(
        store.topics_of(&alice).await.unwrap(),
        [Topic::new("room/7").unwrap()]
    );
}
