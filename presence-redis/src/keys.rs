//! Key names. Every key of a topic (and its pub/sub channel) carries the
//! hash tag of the topic's bucket, so a Redis Cluster keeps them in one slot
//! and a script may touch them all; a member's index carries its member's
//! bucket tag.
//!
//! A bucket is a hash of the id (its bytes, times 31 each step, modulo
//! 1,000,003) modulo [`BUCKETS`]; its tag is the bucket's number (`{417}`).
//! Ids go after the tag as they are (Redis keys are binary-safe, and only
//! the first `{...}` of a key is its tag), so no topic, however many braces
//! it holds, can move its keys apart.

use presence_core::{Error, MemberId, Result, Topic};

/// Buckets of topics (and of members). `sweep_all` reads one small index per
/// bucket; a cluster spreads buckets over its slots. Changing this renames
/// every key: it is part of the storage format.
pub(crate) const BUCKETS: u32 = 1024;

/// The bucket of an id.
pub(crate) fn bucket(id: &str) -> u32 {
    let mut hash: u32 = 0;
    for byte in id.bytes() {
        hash = (hash * 31 + u32::from(byte)) % 1_000_003;
    }
    hash % BUCKETS
}

/// The cluster slot of a bucket's keys (CRC16/XMODEM of the tag, as Redis
/// Cluster computes it).
pub(crate) fn slot(bucket: u32) -> u16 {
    let mut crc: u16 = 0;
    for byte in bucket.to_string().bytes() {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16_384
}

/// Checks a key prefix: braces would make the prefix the hash tag.
pub(crate) fn check_prefix(prefix: &str) -> Result<()> {
    if prefix.contains(['{', '}']) {
        return Err(Error::invalid(
            "key_prefix",
            "must not contain '{' or '}' (the store puts its own hash tags after it)",
        ));
    }
    if prefix.len() > 64 {
        return Err(Error::invalid("key_prefix", "must be at most 64 bytes"));
    }
    Ok(())
}

/// The key names of a store.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    prefix: String,
}

/// The four keys of one topic, in the order the scripts take them.
pub(crate) type TopicKeys = [String; 4];

impl Keys {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// `e` (named `h:`), `s` (named `l:`), the channel `v` and the bucket
    /// index `i` (named `n`) of a topic (see `lua/lib.lua`). Every data
    /// key's name changes with the storage format (this one's entries are
    /// keyed by member; the format before it named its keys `e:`, `s:`,
    /// `c:`, `m:`, `i` and `u:`), so a store never misreads or sweeps
    /// another format's keys: during a rolling upgrade each version sees
    /// only the members joined through its own version (see
    /// `docs/contract.md`, "Storage format"). Event messages keep one
    /// format.
    pub(crate) fn topic(&self, topic: &Topic) -> TopicKeys {
        let b = bucket(topic);
        let p = &self.prefix;
        [
            format!("{p}{{{b}}}h:{topic}"),
            format!("{p}{{{b}}}l:{topic}"),
            self.channel(topic),
            self.index(b),
        ]
    }

    /// The `s` zset of a topic (last_seen_at of its entries), which
    /// `touch` writes with plain commands.
    pub(crate) fn last_seen(&self, topic: &Topic) -> String {
        format!("{}{{{}}}l:{topic}", self.prefix, bucket(topic))
    }

    /// The pub/sub channel of a topic.
    pub(crate) fn channel(&self, topic: &Topic) -> String {
        format!("{}{{{}}}v:{topic}", self.prefix, bucket(topic))
    }

    /// The topic a channel name belongs to, if it is one of this store's.
    pub(crate) fn topic_of_channel<'a>(&self, channel: &'a str) -> Option<&'a str> {
        let rest = channel
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix('{')?;
        let (_, rest) = rest.split_once('}')?;
        rest.strip_prefix("v:")
    }

    /// A bucket's index of topics (sweep_all).
    pub(crate) fn index(&self, bucket: u32) -> String {
        format!("{}{{{bucket}}}n", self.prefix)
    }

    /// A member's index: `connection\0topic` scored by the entry's token.
    pub(crate) fn member(&self, member: &MemberId) -> String {
        format!("{}{{{}}}w:{member}", self.prefix, bucket(member))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_keeps_its_keys_together_whatever_it_holds() {
        let keys = Keys::new("app:");
        for name in ["room", "{x}", "a}b{c", "}", "é/1"] {
            let topic = Topic::new(name).unwrap();
            let all = keys.topic(&topic);
            let tag = format!("{{{}}}", bucket(name));
            for key in &all[..3] {
                assert!(key.starts_with(&format!("app:{tag}")), "{key}");
            }
            assert_eq!(keys.topic_of_channel(&all[2]), Some(name));
            assert_eq!(keys.last_seen(&topic), all[1]);
        }
        assert_eq!(keys.topic_of_channel("other:{1}v:room"), None);
        assert!(bucket("room") < BUCKETS);
    }

    #[test]
    fn slots_are_redis_clusters() {
        // CLUSTER KEYSLOT "{0}x" and "{1023}x" on a Redis 7 server.
        assert_eq!(slot(0), 13_907);
        assert_eq!(slot(1023), 14_911);
    }

    #[test]
    fn prefixes_with_braces_are_refused() {
        assert_eq!(
            check_prefix("a{b").unwrap_err().invalid_field(),
            Some("key_prefix")
        );
        assert!(check_prefix("presence:").is_ok());
        assert!(check_prefix("").is_ok());
    }
}
