//! What the scripts send and answer, read back: event messages and the rows
//! of entries and departures.
//!
//! An event message is the records of one script call for one topic, in
//! commit order. A record is a kind byte (`J` join, `U` update, `L` left,
//! `E` expired, `D` disconnected), a flag byte (`1`: first for member on a
//! join, last for member on a removal), then five fields, each
//! `<length>:<bytes>`: member, connection, joined_at, last_seen_at, meta.
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
pub(crate) fn decode_events(topic: &Topic, mut message: &[u8]) -> Vec<Event> {
    let mut events = Vec::new();
    if message.first() == Some(&b'S') {
        return events;
    }
    while !message.is_empty() {
        let Some(event) = decode_record(topic, &mut message) else {
            events.push(Event::Resync);
            break;
        };
        events.extend(event);
    }
    events
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

/// A departure row of `remove` in `lua/lib.lua`: topic number, member,
/// connection, joined_at, last_seen_at, meta, token, last. Returns the
/// topic number, the departure (`None` for an invalid entry, removed
/// silently) and the entry's token.
pub(crate) fn departure_row(
    row: &[Value],
    topics: &[Topic],
    reason: Reason,
) -> Option<(usize, Option<Departure>, u64)> {
    let [t, member, connection, joined, seen, meta, token, last] = row else {
        return None;
    };
    let t = usize::try_from(int(t)?).ok()?.checked_sub(1)?;
    let topic = topics.get(t)?;
    let token = int(token)? as u64;
    let departure = entry(
        topic,
        bytes(member)?,
        bytes(connection)?,
        millis(bytes(joined)?),
        millis(bytes(seen)?),
        bytes(meta)?,
    )
    .map(|entry| Departure {
        entry,
        reason,
        last_for_member: int(last) == Some(1),
    });
    Some((t, departure, token))
}

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
    fn stored_values_split_and_damage_reads_as_meta() {
        assert_eq!(stored_value(b"5:77:{\"a\":1}"), (5, 77, &b"{\"a\":1}"[..]));
        assert_eq!(stored_value(b"garbage"), (0, 0, &b"garbage"[..]));
        assert_eq!(split_field(b"m\0c"), (&b"m"[..], &b"c"[..]));
    }
}
