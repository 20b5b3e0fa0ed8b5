//! What the scripts send and answer, read back: event messages and the rows
//! of entries and departures.
//!
//! An event message is the records of one script call for one topic, in
//! commit order. A record is a kind byte (`J` join, `U` update), a flag
//! byte (`1`: first for member), then five fields, each `<length>:<bytes>`:
//! member, connection, joined_at, last_seen_at, meta. (Older stores also
//! sent removals as such records: kinds `L` left, `E` expired, `D`
//! disconnected, flag `1` when the member has nothing left.)
//!
//! A removal script sends its departures of a topic as one removal
//! message instead, built without parsing anything: `R`, the kind byte
//! (`L`, `E`, `D`), `A` (every member has nothing left) or `S` (some), the
//! number of departures, then NUL-separated: per departure its stored
//! field (`member\0connection`), stored value (`joined_at:token:meta`) and
//! last_seen_at, and after an `S` the members left with nothing. Ids and
//! stored values hold no NUL. The departures come in no particular order;
//! the reader puts them in the contract's order (see [`order_departures`]).
//! A message starting with `S` is a sync marker of some store (see
//! `events`), not an event.

use presence_core::{Departure, Entry, Event, Meta, PresenceKey, Reason, Timestamp, Topic};
use redis::Value;

/// Reads a decimal timestamp, tolerating a score printed as a float.
pub(crate) fn millis(text: &[u8]) -> i64 {
    let text = String::from_utf8_lossy(text);
    text.parse::<i64>()
        .ok()
        .or_else(|| text.parse::<f64>().ok().map(|f| f as i64))
        .unwrap_or(0)
}

/// An entry from stored parts; `None` (with a warning) when its ids are not
/// valid ids (a damaged row).
pub(crate) fn entry(
    topic: &Topic,
    member: &[u8],
    connection: &[u8],
    joined_at: i64,
    last_seen_at: i64,
    meta: &[u8],
) -> Option<Entry> {
    let key = std::str::from_utf8(member)
        .ok()
        .zip(std::str::from_utf8(connection).ok())
        .and_then(|(m, c)| PresenceKey::new(topic.clone(), m, c).ok());
    let Some(key) = key else {
        tracing::warn!(
            topic = %topic,
            "skipping a stored entry whose ids are not valid presence ids"
        );
        return None;
    };
    let meta = Meta::from_stored_json(&String::from_utf8_lossy(meta), &key);
    Some(Entry {
        key,
        meta,
        joined_at: Timestamp::from_millis(joined_at),
        last_seen_at: Timestamp::from_millis(last_seen_at),
    })
}

/// The parts of a stored value `joined_at:token:meta`; a damaged value is
/// joined at 0 with token 0 and its whole text as meta.
pub(crate) fn stored_value(value: &[u8]) -> (i64, u64, &[u8]) {
    let mut parts = value.splitn(3, |b| *b == b':');
    let joined = parts
        .next()
        .and_then(|p| std::str::from_utf8(p).ok()?.parse().ok());
    let token = parts
        .next()
        .and_then(|p| std::str::from_utf8(p).ok()?.parse().ok());
    match (joined, token, parts.next()) {
        (Some(joined), Some(token), Some(meta)) => (joined, token, meta),
        _ => (0, 0, value),
    }
}

/// The record (`joined_at:token:meta`) of `connection` in a member's stored
/// value (NUL-separated pairs of connection and record, see `lua/lib.lua`).
pub(crate) fn record_of<'a>(value: &'a [u8], connection: &str) -> Option<&'a [u8]> {
    let mut parts = value.split(|b| *b == 0);
    while let Some(stored) = parts.next() {
        let record = parts.next().unwrap_or_default();
        if stored == connection.as_bytes() {
            return Some(record);
        }
    }
    None
}

/// Splits `member\0connection`.
pub(crate) fn split_field(field: &[u8]) -> (&[u8], &[u8]) {
    match field.iter().position(|b| *b == 0) {
        Some(at) => (&field[..at], &field[at + 1..]),
        None => (field, &[]),
    }
}

fn next_field<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let colon = rest.iter().position(|b| *b == b':')?;
    let len: usize = std::str::from_utf8(&rest[..colon]).ok()?.parse().ok()?;
    let body = rest.get(colon + 1..colon + 1 + len)?;
    *rest = &rest[colon + 1 + len..];
    Some(body)
}

/// The events of one message of `topic`'s channel, in order. A record this
/// code cannot read ends the message with `Resync`: what followed is lost.
///
/// A message of departures (one removal script's, for one topic) comes in
/// no particular order, each record flagged when its member has nothing
/// left: its events are put in the contract's order, the flag kept on each
/// member's last departure only (see [`order_departures`]).
pub(crate) fn decode_events(topic: &Topic, mut message: &[u8]) -> Vec<Event> {
    let mut events = Vec::new();
    if message.first() == Some(&b'S') {
        return events;
    }
    if message.first() == Some(&b'R') {
        let Some(mut departures) = removal_message(topic, message) else {
            return vec![Event::Resync];
        };
        order_departures(&mut departures);
        return departures
            .into_iter()
            .map(|(departure, _)| Event::Leave { departure })
            .collect();
    }
    let mut lost = false;
    while !message.is_empty() {
        let Some(event) = decode_record(topic, &mut message) else {
            lost = true;
            break;
        };
        events.extend(event);
    }
    if events.len() > 1
        && events
            .iter()
            .all(|event| matches!(event, Event::Leave { .. }))
    {
        let mut departures: Vec<(Departure, u64)> = events
            .into_iter()
            .filter_map(|event| match event {
                Event::Leave { departure } => Some((departure, 0)),
                _ => None,
            })
            .collect();
        order_departures(&mut departures);
        events = departures
            .into_iter()
            .map(|(departure, _)| Event::Leave { departure })
            .collect();
    }
    if lost {
        events.push(Event::Resync);
    }
    events
}

/// Puts departures (with their tokens) in the contract's order: by topic,
/// member, connection. Of one member's departures in one topic, only the
/// last keeps `last_for_member`, set when any of them had it (a removal
/// message marks every departure of a member left with nothing).
pub(crate) fn order_departures(departures: &mut [(Departure, u64)]) {
    departures.sort_by(|(a, _), (b, _)| a.entry.key.cmp(&b.entry.key));
    let mut start = 0;
    while start < departures.len() {
        let key = &departures[start].0.entry.key;
        let end = start
            + departures[start..]
                .iter()
                .position(|(d, _)| {
                    d.entry.key.topic != key.topic || d.entry.key.member != key.member
                })
                .unwrap_or(departures.len() - start);
        let last = departures[start..end]
            .iter()
            .any(|(d, _)| d.last_for_member);
        for (d, _) in &mut departures[start..end] {
            d.last_for_member = false;
        }
        departures[end - 1].0.last_for_member = last;
        start = end;
    }
}

/// The departures of a removal message (see the module docs) with their
/// entries' tokens, not yet in the contract's order (see
/// [`order_departures`]); a departure of an invalid entry is skipped (it
/// was removed silently). `None` for a message this code cannot read.
pub(crate) fn removal_message(topic: &Topic, message: &[u8]) -> Option<Vec<(Departure, u64)>> {
    let [b'R', kind, scope, rest @ ..] = message else {
        return None;
    };
    let reason = match kind {
        b'L' => Reason::Left,
        b'E' => Reason::Expired,
        b'D' => Reason::Disconnected,
        _ => return None,
    };
    let mut parts = rest.split(|b| *b == 0);
    let count: usize = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let mut rows = Vec::with_capacity(count.min(100_000));
    for _ in 0..count {
        let member = parts.next()?;
        let connection = parts.next()?;
        let value = parts.next()?;
        let seen = parts.next()?;
        rows.push((member, connection, value, seen));
    }
    let gone: Option<std::collections::HashSet<&[u8]>> = match scope {
        b'A' => None,
        b'S' => Some(parts.by_ref().collect()),
        _ => return None,
    };
    if gone.is_none() && parts.next().is_some() {
        return None;
    }
    Some(
        rows.into_iter()
            .filter_map(|(member, connection, value, seen)| {
                let (joined, token, meta) = stored_value(value);
                let entry = entry(topic, member, connection, joined, millis(seen), meta)?;
                let last_for_member = gone.as_ref().is_none_or(|gone| gone.contains(member));
                Some((
                    Departure {
                        entry,
                        reason,
                        last_for_member,
                    },
                    token,
                ))
            })
            .collect(),
    )
}

/// A removal script's answer (see `publish_removals` in `lua/lib.lua`):
/// flat pairs of a topic number and that topic's removal message. The
/// departures with their entries' tokens, not yet in the contract's order
/// (see [`order_departures`]). `None` for an answer this code cannot read.
pub(crate) fn removal_answer(values: &[Value], topics: &[Topic]) -> Option<Vec<(Departure, u64)>> {
    let mut departures = Vec::new();
    for pair in values.chunks(2) {
        let [t, message] = pair else {
            return None;
        };
        let t = usize::try_from(int(t)?).ok()?.checked_sub(1)?;
        departures.extend(removal_message(topics.get(t)?, bytes(message)?)?);
    }
    Some(departures)
}

/// One record; `Some(None)` for a readable record of an invalid entry.
fn decode_record(topic: &Topic, message: &mut &[u8]) -> Option<Option<Event>> {
    let (&kind, rest) = message.split_first()?;
    let (&flag, rest) = rest.split_first()?;
    let mut rest = rest;
    let member = next_field(&mut rest)?;
    let connection = next_field(&mut rest)?;
    let joined = millis(next_field(&mut rest)?);
    let seen = millis(next_field(&mut rest)?);
    let meta = next_field(&mut rest)?;
    *message = rest;
    let flag = flag == b'1';
    let Some(entry) = entry(topic, member, connection, joined, seen, meta) else {
        return Some(None);
    };
    let reason = match kind {
        b'J' => {
            return Some(Some(Event::Join {
                entry,
                first_for_member: flag,
            }));
        }
        b'U' => return Some(Some(Event::Update { entry })),
        b'L' => Reason::Left,
        b'E' => Reason::Expired,
        b'D' => Reason::Disconnected,
        _ => return None,
    };
    Some(Some(Event::Leave {
        departure: Departure {
            entry,
            reason,
            last_for_member: flag,
        },
    }))
}

/// The bytes of a reply value (bulk or simple string).
pub(crate) fn bytes(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(text) => Some(text.as_bytes()),
        _ => None,
    }
}

/// An integer reply, or a string holding one.
pub(crate) fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        Value::Boolean(b) => Some(i64::from(*b)),
        other => bytes(other).map(millis),
    }
}

/// The elements of an array reply.
pub(crate) fn array(value: Value) -> Vec<Value> {
    match value {
        Value::Array(items) | Value::Set(items) => items,
        _ => Vec::new(),
    }
}

/// A script's malformed answer, as an error.
#[derive(Debug)]
pub(crate) struct Malformed(pub(crate) &'static str);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unexpected answer from the {} script", self.0)
    }
}

impl std::error::Error for Malformed {}

/// The entries of flat triples `member\0connection`, value, last_seen_at
/// (members.lua, member.lua).
pub(crate) fn entry_triples(topic: &Topic, values: Vec<Value>) -> Vec<Entry> {
    values
        .chunks(3)
        .filter_map(|triple| {
            let [field, value, seen] = triple else {
                return None;
            };
            let (member, connection) = split_field(bytes(field)?);
            let (joined, _, meta) = stored_value(bytes(value)?);
            entry(
                topic,
                member,
                connection,
                joined,
                millis(bytes(seen)?),
                meta,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_and_damage_becomes_resync() {
        let topic = Topic::new("room").unwrap();
        let message = b"J15:alice3:tab13:170000000000013:17000000000002:{}L05:alice3:tab1:51:62:{}";
        let events = decode_events(&topic, message);
        assert_eq!(events.len(), 2);
        assert!(matches!(
            &events[0],
            Event::Join { entry, first_for_member: true } if entry.key.member.as_str() == "alice"
                && entry.joined_at.as_millis() == 1_700_000_000_000
        ));
        assert!(matches!(
            &events[1],
            Event::Leave { departure } if departure.reason == Reason::Left && !departure.last_for_member
        ));
        assert_eq!(decode_events(&topic, b"J1999:x"), [Event::Resync]);
        assert!(decode_events(&topic, b"S123").is_empty());
        // An entry with invalid ids is skipped, the rest still read.
        let message = b"E10:0:1:51:62:{}E15:alice3:tab1:51:62:{}";
        assert_eq!(decode_events(&topic, message).len(), 1);
    }

    #[test]
    fn removal_messages_are_ordered_and_only_the_last_keeps_the_flag() {
        let topic = Topic::new("room").unwrap();
        // As a removal script sends them: unordered; alice is gone, bob
        // keeps a connection elsewhere, carol is gone.
        let message = b"RES4\x00bob\x00t2\x005:14:{}\x006\x00alice\x00t2\x005:13:{}\x006\x00bob\x00t1\x005:12:{}\x006\x00alice\x00t1\x005:11:{\"a\":1}\x007\x00alice";
        let events = decode_events(&topic, message);
        let seen: Vec<(&str, &str, bool)> = events
            .iter()
            .map(|event| match event {
                Event::Leave { departure } => {
                    assert_eq!(departure.reason, Reason::Expired);
                    (
                        departure.entry.key.member.as_str(),
                        departure.entry.key.connection.as_str(),
                        departure.last_for_member,
                    )
                }
                other => panic!("not a departure: {other:?}"),
            })
            .collect();
        assert_eq!(
            seen,
            [
                ("alice", "t1", false),
                ("alice", "t2", true),
                ("bob", "t1", false),
                ("bob", "t2", false),
            ]
        );
        let Event::Leave { departure } = &events[0] else {
            unreachable!()
        };
        assert_eq!(departure.entry.joined_at.as_millis(), 5);
        assert_eq!(departure.entry.last_seen_at.as_millis(), 7);
        // The script's answer carries the same message; tokens come from
        // the stored values.
        let answer = [Value::Int(1), Value::BulkString(message.to_vec())];
        let mut removed = removal_answer(&answer, std::slice::from_ref(&topic)).unwrap();
        order_departures(&mut removed);
        let tokens: Vec<u64> = removed.iter().map(|(_, token)| *token).collect();
        assert_eq!(tokens, [11, 13, 12, 14]);
        // "A": every member is gone; each member's last keeps the flag.
        let all = b"RLA2\x00bob\x00t1\x005:12:{}\x006\x00bob\x00t2\x005:14:{}\x006";
        let flags: Vec<bool> = removal_message(&topic, all)
            .map(|mut removed| {
                order_departures(&mut removed);
                removed.iter().map(|(d, _)| d.last_for_member).collect()
            })
            .unwrap();
        assert_eq!(flags, [false, true]);
        // A departure short, or an unknown kind, is not a removal message.
        assert_eq!(
            decode_events(&topic, b"RLA2\x00bob\x00t1\x005:12:{}\x006"),
            [Event::Resync]
        );
        assert!(removal_message(&topic, b"RJA1\x00bob\x00t1\x005:12:{}\x006").is_none());
        // An invalid entry (empty ids) is skipped, the rest still read.
        let planted = b"REA2\x00\x00\x005:1:{}\x006\x00bob\x00t1\x005:12:{}\x006";
        assert_eq!(removal_message(&topic, planted).unwrap().len(), 1);
    }

    #[test]
    fn stored_values_split_and_damage_reads_as_meta() {
        assert_eq!(stored_value(b"5:77:{\"a\":1}"), (5, 77, &b"{\"a\":1}"[..]));
        assert_eq!(stored_value(b"garbage"), (0, 0, &b"garbage"[..]));
        assert_eq!(split_field(b"m\0c"), (&b"m"[..], &b"c"[..]));
    }

    #[test]
    fn a_connection_is_found_by_position_not_by_text() {
        // The second connection is named like the first one's record.
        let value = b"tab\x005:1:{}\x005:1:{}\x006:2:{\"a\":1}";
        assert_eq!(record_of(value, "tab"), Some(&b"5:1:{}"[..]));
        assert_eq!(record_of(value, "5:1:{}"), Some(&b"6:2:{\"a\":1}"[..]));
        assert_eq!(record_of(value, "6:2:{\"a\":1}"), None);
        assert_eq!(record_of(value, "other"), None);
        // A damaged value's last connection has an empty record.
        assert_eq!(record_of(b"a\x001:1:{}\x00b", "b"), Some(&b""[..]));
    }
}
