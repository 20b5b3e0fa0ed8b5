//! The Redis benches' baseline: the same joins as the store makes, as plain
//! commands, one call at a time (`HSET` of the entry, then `ZADD` of its
//! last-seen time, each awaited before the next; no script, no
//! pipelining), on one server's connection or a cluster client's.

use presence_core::PresenceKey;
use presence_redis::redis;
use presence_redis::redis::aio::ConnectionLike;

/// A baseline connection: one server's multiplexed connection, or the
/// cluster client's.
#[derive(Clone)]
pub enum Plain {
    /// One server.
    Single(redis::aio::MultiplexedConnection),
    /// A cluster.
    Cluster(redis::cluster_async::ClusterConnection),
}

impl Plain {
    /// Connects to the server at `url`, or to the cluster of `nodes` when
    /// there are any.
    pub async fn connect(url: &str, nodes: &[String]) -> Self {
        if nodes.is_empty() {
            let client = redis::Client::open(url).expect("a Redis URL");
            Plain::Single(
                client
                    .get_multiplexed_async_connection()
                    .await
                    .expect("a connection to the bench server"),
            )
        } else {
            let client =
                redis::cluster::ClusterClient::new(nodes.to_vec()).expect("cluster node URLs");
            Plain::Cluster(
                client
                    .get_async_connection()
                    .await
                    .expect("a connection to the bench cluster"),
            )
        }
    }

    async fn query(&mut self, cmd: &redis::Cmd) {
        let result = match self {
            Plain::Single(c) => c.req_packed_command(cmd).await,
            Plain::Cluster(c) => c.req_packed_command(cmd).await,
        };
        result.expect("a baseline command");
    }

    /// One join as plain commands, one at a time: the entry into the
    /// topic's hash, then its time into the topic's sorted set (keys under
    /// `prefix`, tagged by topic).
    pub async fn join(&mut self, prefix: &str, key: &PresenceKey) {
        let now = presence_core::Clock::now(&presence_core::SystemClock).as_millis();
        let field = format!("{}\0{}", key.member, key.connection);
        let mut hset = redis::cmd("HSET");
        hset.arg(format!("{prefix}{{{}}}e", key.topic))
            .arg(&field)
            .arg(format!("{now}:1:{{}}"));
        self.query(&hset).await;
        let mut zadd = redis::cmd("ZADD");
        zadd.arg(format!("{prefix}{{{}}}s", key.topic))
            .arg(now)
            .arg(&field);
        self.query(&zadd).await;
    }

    /// Joins `keys` from 64 tasks (or as many as there are connections,
    /// whichever is more), each joining its share one key after another
    /// on connection `task % connections.len()`; how long it took.
    pub async fn join_concurrently(
        connections: &[Plain],
        prefix: &str,
        keys: &[PresenceKey],
    ) -> std::time::Duration {
        let chunk = keys.len().div_ceil(64).max(1);
        let start = std::time::Instant::now();
        let tasks: Vec<_> = keys
            .chunks(chunk)
            .enumerate()
            .map(|(i, share)| {
                let (mut plain, share, prefix) = (
                    connections[i % connections.len()].clone(),
                    share.to_vec(),
                    prefix.to_owned(),
                );
                tokio::spawn(async move {
                    for key in &share {
                        plain.join(&prefix, key).await;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("a baseline task panicked");
        }
        start.elapsed()
    }
}
