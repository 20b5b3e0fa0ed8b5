//! A simulated chat room on the memory store: users join on several tabs,
//! heartbeat, drop off without saying goodbye and get swept, while a
//! subscriber follows the live member list from events alone.
//!
//! `cargo run --release -p presence-memory --example room`
//!
//! Simulated time runs on a manual clock (ten minutes in a blink); the
//! summary compares the subscriber's view with the store's.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use presence_core::{
    Event, ManualClock, Meta, PresenceKey, PresenceStore, PresenceStoreExt, Timestamp, Topic,
};
use presence_memory::{MemoryConfig, MemoryStore};

const USERS: usize = 2_000;
const SIMULATED_SECONDS: u64 = 600;
const TTL: Duration = Duration::from_secs(30);

#[tokio::main(flavor = "current_thread")]
async fn main() -> presence_core::Result<()> {
    let clock = ManualClock::new(Timestamp::from_millis(1_700_000_000_000));
    let store = MemoryStore::with_config(MemoryConfig {
        clock: Arc::new(clock.clone()),
        event_buffer: 1 << 16,
        ..MemoryConfig::default()
    });
    let room = Topic::new("/chat/lobby")?;

    // The subscriber: rebuilds the member list from events only.
    let mut events = store.subscribe(&room).await?;
    let follower = tokio::spawn(async move {
        let mut members: BTreeMap<String, usize> = BTreeMap::new();
        let mut seen = 0u64;
        while let Some(event) = events.next().await {
            seen += 1;
            match event {
                Event::Join { entry, .. } => {
                    *members.entry(entry.key.member.to_string()).or_default() += 1;
                }
                Event::Leave { departure } => {
                    let member = departure.entry.key.member.to_string();
                    let left = members.get_mut(&member).expect("leave of a known member");
                    *left -= 1;
                    if *left == 0 {
                        members.remove(&member);
                    }
                }
                Event::Resync => unreachable!("the buffer holds every event of this run"),
                _ => {}
            }
        }
        (members.len(), seen)
    });

    // Users: some on one tab, some on three; each goes quiet at some point.
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next = |bound: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % bound
    };
    struct User {
        tabs: Vec<PresenceKey>,
        arrives: u64,
        goes_quiet: u64,
    }
    let users: Vec<User> = (0..USERS)
        .map(|u| {
            let tabs = (0..1 + next(3))
                .map(|t| PresenceKey::new(&room, format!("user-{u}"), format!("tab-{t}")))
                .collect::<Result<_, _>>()?;
            let arrives = next(SIMULATED_SECONDS / 2);
            Ok(User {
                tabs,
                arrives,
                goes_quiet: arrives + 30 + next(SIMULATED_SECONDS),
            })
        })
        .collect::<presence_core::Result<_>>()?;

    let started = Instant::now();
    let (mut calls, mut joins, mut beats, mut swept, mut peak) = (0u64, 0u64, 0u64, 0u64, 0u64);
    for second in 0..SIMULATED_SECONDS {
        let mut heartbeats = Vec::new();
        for user in &users {
            if second == user.arrives {
                for tab in &user.tabs {
                    store.join(tab, Meta::new()).await?;
                    joins += 1;
                    calls += 1;
                }
            } else if second > user.arrives && second < user.goes_quiet && second % 10 == 0 {
                heartbeats.extend(user.tabs.iter().cloned());
            }
        }
        for batch in heartbeats.chunks(presence_core::MAX_BATCH_KEYS) {
            store.touch_many(batch).await?;
            beats += batch.len() as u64;
            calls += 1;
        }
        if second % 5 == 0 {
            swept += store.sweep_expired(TTL).await?.len() as u64;
            calls += 1;
        }
        let counts = store.count(&room).await?;
        peak = peak.max(counts.members);
        if second % 60 == 0 {
            println!(
                "t={second:>3}s  members {:>5}  connections {:>5}",
                counts.members, counts.connections
            );
        }
        clock.advance(Duration::from_secs(1));
    }
    // Everyone has gone quiet by now; a last sweep empties the room.
    clock.advance(TTL * 2);
    swept += store.sweep_expired(TTL).await?.len() as u64;
    let elapsed = started.elapsed();
    let final_counts = store.count(&room).await?;
    drop(store);
    let (followed_members, events_seen) = follower.await.expect("follower");

    println!();
    println!("simulated      {SIMULATED_SECONDS} s of a room with {USERS} users");
    println!("joins          {joins} connections");
    println!("heartbeats     {beats} touches in {calls} batched calls overall");
    println!("swept          {swept} connections that stopped heartbeating");
    println!("peak           {peak} members at once");
    println!("events         {events_seen} seen by the subscriber");
    println!(
        "final          store {} members, subscriber {} members",
        final_counts.members, followed_members
    );
    println!("wall time      {:.1} ms", elapsed.as_secs_f64() * 1e3);
    assert_eq!(swept, joins, "every connection was swept exactly once");
    assert_eq!(final_counts.members as usize, followed_members);
    Ok(())
}
