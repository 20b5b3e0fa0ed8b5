//! Which cluster node serves which bucket, so `sweep_all` reads the bucket
//! indexes of each node in one script call instead of one call per bucket,
//! and a batch of joins is one script call per node.
//!
//! The map is read with `CLUSTER SLOTS` and kept for a few seconds. It is an
//! optimization only: a call grouped by a stale map is refused by the
//! server (keys not served there) before it runs, and the caller falls back
//! to one call per bucket.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::Value;

use crate::keys::{BUCKETS, slot};
use crate::wire;

/// How long a slot map is trusted.
const FRESH_FOR: Duration = Duration::from_secs(10);

/// A slot map as read: when, the buckets grouped by node, and each
/// bucket's group number.
type Learned = (Instant, Vec<Vec<u32>>, Arc<Vec<u32>>);

#[derive(Default)]
pub(crate) struct ShardMap {
    cached: Mutex<Option<Learned>>,
}

impl ShardMap {
    fn fresh<T>(&self, part: impl FnOnce(&Learned) -> T) -> Option<T> {
        let cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        cached
            .as_ref()
            .filter(|(at, _, _)| at.elapsed() < FRESH_FOR)
            .map(part)
    }

    /// The cached grouping of buckets by node, if fresh.
    pub(crate) fn get(&self) -> Option<Vec<Vec<u32>>> {
        self.fresh(|(_, groups, _)| groups.clone())
    }

    /// Each bucket's group number in [`get`](Self::get)'s grouping, if
    /// fresh.
    pub(crate) fn nodes(&self) -> Option<Arc<Vec<u32>>> {
        self.fresh(|(_, _, nodes)| nodes.clone())
    }

    /// Forgets the map (a grouped call was refused).
    pub(crate) fn invalidate(&self) {
        *self.cached.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Groups the buckets by the master serving their slot, from a
    /// `CLUSTER SLOTS` answer; caches and returns the groups.
    pub(crate) fn learn(&self, slots: Value) -> Vec<Vec<u32>> {
        let mut ranges: Vec<(i64, i64, Vec<u8>)> = Vec::new();
        for range in wire::array(slots) {
            let range = wire::array(range);
            let (Some(start), Some(end), Some(master)) = (
                range.first().and_then(wire::int),
                range.get(1).and_then(wire::int),
                range.get(2).cloned(),
            ) else {
                continue;
            };
            let master = wire::array(master);
            let mut address = master
                .first()
                .and_then(wire::bytes)
                .unwrap_or_default()
                .to_vec();
            address.extend(b":");
            address.extend(
                master
                    .get(1)
                    .and_then(wire::int)
                    .unwrap_or(0)
                    .to_string()
                    .bytes(),
            );
            ranges.push((start, end, address));
        }
        let mut by_node: BTreeMap<&[u8], Vec<u32>> = BTreeMap::new();
        let mut unknown = Vec::new();
        for b in 0..BUCKETS {
            let s = i64::from(slot(b));
            match ranges
                .iter()
                .find(|(start, end, _)| (*start..=*end).contains(&s))
            {
                Some((_, _, node)) => by_node.entry(node).or_default().push(b),
                None => unknown.push(vec![b]),
            }
        }
        let mut groups: Vec<Vec<u32>> = by_node.into_values().collect();
        groups.extend(unknown);
        let mut nodes = vec![0; BUCKETS as usize];
        for (n, group) in groups.iter().enumerate() {
            for b in group {
                nodes[*b as usize] = n as u32;
            }
        }
        *self.cached.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now(), groups.clone(), Arc::new(nodes)));
        groups
    }
}
