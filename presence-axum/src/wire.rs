//! What the browser receives: members without connection ids, states and
//! diffs, as JSON.

use presence::serde_json::Value;
use presence::{ChannelMember, Counts, Meta, Timestamp};
use serde::Serialize;

/// A member as the browser sees it. Connection ids are left out: a
/// client id is what `/leave` names, so viewers never learn each other's;
/// `last_seen_at` is left out because heartbeats move it without events.
#[derive(Serialize)]
pub(crate) struct WebMember<'a> {
    id: &'a str,
    profile: &'a Value,
    joined_at: Timestamp,
    connections: Vec<WebConnection<'a>>,
}

#[derive(Serialize)]
struct WebConnection<'a> {
    meta: &'a Meta,
    joined_at: Timestamp,
}

impl<'a> WebMember<'a> {
    pub(crate) fn of(member: &'a ChannelMember) -> Self {
        Self {
            id: member.member.member.as_str(),
            profile: &member.profile,
            joined_at: member.member.joined_at,
            connections: member
                .member
                .connections
                .iter()
                .map(|c| WebConnection {
                    meta: &c.meta,
                    joined_at: c.joined_at,
                })
                .collect(),
        }
    }
}

/// A channel's whole state: in `/state` (with `last_id`) and as the data of
/// an `event: state` (with `channel` and `id`). `members` is absent for a
/// count-only channel.
#[derive(Serialize)]
pub(crate) struct WebState<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) channel: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) id: Option<&'a str>,
    pub(crate) count_only: bool,
    pub(crate) counts: Counts,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) members: Option<Vec<WebMember<'a>>>,
    /// Only in `/state`: the id of the last diff this state includes
    /// (`null` when no stream of the channel is open in this process).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) last_id: Option<Option<&'a str>>,
}

/// The data of an `event: diff`. `joins` and `leaves` are absent for a
/// count-only channel.
#[derive(Serialize)]
pub(crate) struct WebDiff<'a> {
    pub(crate) channel: &'a str,
    pub(crate) id: &'a str,
    pub(crate) counts: Counts,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) joins: Option<Vec<WebMember<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) leaves: Option<Vec<&'a str>>,
}

/// The data of an `event: state` for a channel the viewer may not see or
/// that does not exist (the same bytes for both).
#[derive(Serialize)]
pub(crate) struct WebMissing<'a> {
    pub(crate) channel: &'a str,
    pub(crate) missing: bool,
}

/// JSON text of a value whose serialization cannot fail (no maps with
/// non-string keys, no failing `Serialize`).
pub(crate) fn to_json(value: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(value).expect("web payloads serialize")
}
