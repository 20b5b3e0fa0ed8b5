//! The router's settings.

use std::time::Duration;

use presence::{Error, Result};
use tokio_util::sync::CancellationToken;

/// How many `/update` requests one client of one member may make.
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
pub struct RateLimit {
    /// Requests allowed within `per` (a burst of this many is let through).
    pub updates: u32,
    /// The period.
    pub per: Duration,
}

impl Default for RateLimit {
    /// 20 updates per 10 seconds, as Discourse allows: the browser client
    /// sends at most one a second while things change, one every heartbeat
    /// otherwise.
    fn default() -> Self {
        Self {
            updates: 20,
            per: Duration::from_secs(10),
        }
    }
}

/// The settings of the web edge; every field has a default
/// (`Config::default()`), and [`PresenceWeb::with_config`](crate::PresenceWeb::with_config)
/// refuses a zero or inconsistent one, naming it.
#[derive(Clone, Debug)]
pub struct Config {
    /// How long a browser's connection lives without a heartbeat: the
    /// fallback TTL of [`PresenceWeb::sweeper`](crate::PresenceWeb::sweeper)
    /// for topics whose channel sets none shorter. Default 60 s.
    pub ttl: Duration,
    /// How often the browser client heartbeats while it is present
    /// anywhere: sent to it in the `x-presence-heartbeat-ms` header of every
    /// `/update` answer. Must be shorter than `ttl` (and than every
    /// channel's TTL). Default 30 s.
    pub heartbeat: Duration,
    /// The most channels one request may name (`/state` and `/events`
    /// channels; each of `/update`'s `present` and `leave`; `/leave`).
    /// Default 50.
    pub max_channels: usize,
    /// `/update` requests per (member, client id). Default 20 per 10 s.
    pub rate_limit: RateLimit,
    /// The most connections (tabs, client ids) one member may have in one
    /// channel at once; a further one is answered `false`. Exact within a
    /// process: see the crate docs for several servers. Default 10.
    pub max_connections_per_member: u32,
    /// How often an idle event stream sends a keep-alive comment, and
    /// re-checks that its viewer may still see each channel. Default 15 s.
    pub keep_alive: Duration,
    /// Changes of one channel within this window are merged into one
    /// `diff` for every viewer; the first change after a quiet spell is
    /// sent at once. `Duration::ZERO` sends every change as it comes.
    /// Default 100 ms.
    pub coalesce: Duration,
    /// How many recent diffs each channel keeps, so a viewer who
    /// reconnects with a `Last-Event-ID` among them continues instead of
    /// getting the whole state again. Default 256.
    pub history: usize,
    /// How long a channel's shared feed stays open after its last viewer
    /// left, so reconnects continue and `/state` answers from memory.
    /// Default 30 s.
    pub linger: Duration,
    /// The largest request body accepted (`413` beyond). Default 256 KiB,
    /// room for 50 channels' meta of 4 KiB each.
    pub max_body_bytes: usize,
    /// Accept `POST`s a browser marks as cross-site (`Sec-Fetch-Site:
    /// cross-site`, or an `Origin` whose host is not the `Host`). Default
    /// `false`: they are answered `403`. See the crate docs.
    pub allow_cross_site: bool,
    /// Cancel it to end every event stream (and the sweeper), so a
    /// graceful shutdown of the server completes with viewers connected.
    pub shutdown: CancellationToken,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(60),
            heartbeat: Duration::from_secs(30),
            max_channels: 50,
            rate_limit: RateLimit::default(),
            max_connections_per_member: 10,
            keep_alive: Duration::from_secs(15),
            coalesce: Duration::from_millis(100),
            history: 256,
            linger: Duration::from_secs(30),
            max_body_bytes: 256 * 1024,
            allow_cross_site: false,
            shutdown: CancellationToken::new(),
        }
    }
}

impl Config {
    /// Refuses zero and inconsistent settings, naming the field.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("ttl", self.ttl),
            ("heartbeat", self.heartbeat),
            ("rate_limit.per", self.rate_limit.per),
            ("keep_alive", self.keep_alive),
        ];
        for (field, value) in positive {
            if value.is_zero() {
                return Err(Error::invalid(field, "must be longer than zero"));
            }
        }
        let counts = [
            ("max_channels", self.max_channels as u64),
            ("rate_limit.updates", u64::from(self.rate_limit.updates)),
            (
                "max_connections_per_member",
                u64::from(self.max_connections_per_member),
            ),
            ("history", self.history as u64),
            ("max_body_bytes", self.max_body_bytes as u64),
        ];
        for (field, value) in counts {
            if value == 0 {
                return Err(Error::invalid(field, "must be at least 1"));
            }
        }
        if self.heartbeat >= self.ttl {
            return Err(Error::invalid(
                "heartbeat",
                format!(
                    "must be shorter than the ttl ({:?}), or connections expire between heartbeats",
                    self.ttl
                ),
            ));
        }
        Ok(())
    }
}
