//! The rate limit per (member, client) and the per-(channel, member) turns
//! that make the connection cap exact within a process.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::OwnedMutexGuard;
use tokio::time::Instant;

use crate::config::RateLimit;
use crate::sync::lock;

/// A map that drops what `keep` refuses once it has doubled since it last
/// did, so it stays proportional to what is alive at O(1) per insertion.
struct Pruned<K, V> {
    map: HashMap<K, V>,
    prune_at: usize,
}

impl<K: Hash + Eq, V> Pruned<K, V> {
    fn new() -> Self {
        Self {
            map: HashMap::new(),
            prune_at: 1024,
        }
    }

    fn prune(&mut self, keep: impl FnMut(&K, &mut V) -> bool) {
        if self.map.len() >= self.prune_at {
            self.map.retain(keep);
            self.prune_at = (2 * self.map.len()).max(1024);
        }
    }
}

/// Token buckets: each key may spend `updates` at once and regains them
/// evenly over `per`.
pub(crate) struct RateLimiter<K> {
    limit: RateLimit,
    buckets: Mutex<Pruned<K, Bucket>>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl<K: Hash + Eq> RateLimiter<K> {
    pub(crate) fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            buckets: Mutex::new(Pruned::new()),
        }
    }

    /// Spends one request of `key`; `Err(wait)` with how long until one is
    /// available when none is.
    pub(crate) fn spend(&self, key: K) -> Result<(), Duration> {
        let now = Instant::now();
        let capacity = f64::from(self.limit.updates);
        let per_token = self.limit.per.as_secs_f64() / capacity;
        let refill = |bucket: &Bucket| {
            let regained = now.saturating_duration_since(bucket.at).as_secs_f64() / per_token;
            (bucket.tokens + regained).min(capacity)
        };
        let mut buckets = lock(&self.buckets);
        // Full buckets hold nothing worth keeping.
        buckets.prune(|_, bucket| refill(bucket) < capacity);
        let bucket = buckets.map.entry(key).or_insert(Bucket {
            tokens: capacity,
            at: now,
        });
        let tokens = refill(bucket);
        if tokens >= 1.0 {
            *bucket = Bucket {
                tokens: tokens - 1.0,
                at: now,
            };
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - tokens) * per_token))
        }
    }
}

/// One async turn per key at a time.
pub(crate) struct Turns<K> {
    turns: Mutex<Pruned<K, Arc<tokio::sync::Mutex<()>>>>,
}

impl<K: Hash + Eq> Turns<K> {
    pub(crate) fn new() -> Self {
        Self {
            turns: Mutex::new(Pruned::new()),
        }
    }

    /// Waits for `key`'s turn; it lasts as long as the guard.
    pub(crate) async fn take(&self, key: K) -> OwnedMutexGuard<()> {
        let turn = {
            let mut turns = lock(&self.turns);
            // A turn nobody holds or waits for is only held by the map.
            turns.prune(|_, turn| Arc::strong_count(turn) > 1);
            turns.map.entry(key).or_default().clone()
        };
        turn.lock_owned().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_then_one_per_interval() {
        let limiter = RateLimiter::new(RateLimit {
            updates: 4,
            per: Duration::from_secs(8),
        });
        for _ in 0..4 {
            assert!(limiter.spend("a").is_ok());
        }
        let wait = limiter.spend("a").unwrap_err();
        assert_eq!(wait, Duration::from_secs(2));
        // Another key has its own bucket.
        assert!(limiter.spend("b").is_ok());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(limiter.spend("a").is_ok());
        assert!(limiter.spend("a").is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn full_buckets_are_forgotten() {
        let limiter = RateLimiter::new(RateLimit {
            updates: 2,
            per: Duration::from_secs(1),
        });
        for key in 0..5000 {
            limiter.spend(key).unwrap();
            if key % 1000 == 999 {
                tokio::time::advance(Duration::from_secs(1)).await;
            }
        }
        let kept = lock(&limiter.buckets).map.len();
        assert!(kept < 2100, "{kept} buckets kept");
    }

    #[tokio::test(start_paused = true)]
    async fn turns_of_one_key_wait_for_each_other() {
        let turns = Turns::new();
        let first = turns.take("k").await;
        let other = turns.take("other").await;
        let waiting = tokio::time::timeout(Duration::from_millis(20), turns.take("k")).await;
        assert!(
            waiting.is_err(),
            "a second turn of k while the first is held"
        );
        drop(first);
        drop(other);
        let _again = turns.take("k").await;
    }
}
