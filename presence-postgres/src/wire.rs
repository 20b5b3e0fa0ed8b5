//! How events travel through NOTIFY: the payload format, both ways.
//!
//! A payload is `<id>|` followed by pieces, one per event, each
//! `<topic bytes>:<event bytes>:<topic><event JSON>`, so a listener routes
//! pieces by topic without parsing JSON and parses only what someone
//! subscribed to. Events are serialized with `Event`'s own serde. `<id>` makes
//! every payload of a transaction unique: Postgres drops a payload identical
//! to one already sent in the same transaction.

use presence_core::Event;

/// NOTIFY refuses payloads of 8,000 bytes or more.
const MAX_PAYLOAD: usize = 7_900;
/// Room kept for the id and the piece's length prefixes.
const MAX_PIECE: usize = 7_800;

/// The payloads carrying `events`, in order, as few as fit; `ids` numbers them.
pub(crate) fn encode(events: &[Event], mut ids: impl FnMut() -> String) -> Vec<String> {
    let mut payloads = Vec::new();
    let mut current = String::new();
    for event in events {
        let Some(topic) = event.topic() else {
            continue;
        };
        let mut json = serde_json::to_string(event).expect("events always serialize");
        if topic.len() + json.len() > MAX_PIECE {
            // Too large for NOTIFY: its subscribers re-read instead.
            json = serde_json::to_string(&Event::Resync).expect("events always serialize");
        }
        let piece = format!("{}:{}:{topic}{json}", topic.len(), json.len());
        if !current.is_empty() && current.len() + piece.len() > MAX_PAYLOAD {
            payloads.push(std::mem::take(&mut current));
        }
        if current.is_empty() {
            current = format!("{}|", ids());
        }
        current.push_str(&piece);
    }
    if !current.is_empty() {
        payloads.push(current);
    }
    payloads
}

/// The `(topic, event JSON)` pieces of a payload (empty if it is not one).
pub(crate) fn decode(payload: &str) -> impl Iterator<Item = (&str, &str)> {
    let mut pieces = payload.split_once('|').map_or("", |(_, pieces)| pieces);
    std::iter::from_fn(move || {
        let (topic, event, rest) = next_piece(pieces)?;
        pieces = rest;
        Some((topic, event))
    })
}

/// Splits the first piece off `pieces`: its topic, its event, the rest.
fn next_piece(pieces: &str) -> Option<(&str, &str, &str)> {
    let (topic_len, rest) = pieces.split_once(':')?;
    let (event_len, rest) = rest.split_once(':')?;
    let (topic, rest) = rest.split_at_checked(topic_len.parse().ok()?)?;
    let (event, rest) = rest.split_at_checked(event_len.parse().ok()?)?;
    Some((topic, event, rest))
}

/// An event from its JSON; one this code cannot read becomes `Resync`.
pub(crate) fn parse(json: &str) -> Event {
    serde_json::from_str(json).unwrap_or(Event::Resync)
}

#[cfg(test)]
mod tests {
    use super::*;
    use presence_core::{Entry, Meta, PresenceKey, Timestamp};

    fn join(topic: &str, meta: serde_json::Value) -> Event {
        Event::Join {
            entry: Entry {
                key: PresenceKey::new(topic, "m", "c").unwrap(),
                meta: Meta::from_value(meta).unwrap(),
                joined_at: Timestamp::from_millis(1),
                last_seen_at: Timestamp::from_millis(2),
            },
            first_for_member: true,
        }
    }

    #[test]
    fn events_round_trip_in_order_through_few_payloads() {
        let topics = ["a:b|c", "é\n", "plain"];
        let events: Vec<Event> = (0..300)
            .map(|i| join(topics[i % 3], serde_json::json!({ "i": i })))
            .collect();
        let mut n = 0;
        let payloads = encode(&events, || {
            n += 1;
            n.to_string()
        });
        assert!(
            payloads.len() < 20,
            "{} payloads for 300 small events",
            payloads.len()
        );
        assert!(payloads.iter().all(|p| p.len() < 8_000));
        let unique: std::collections::HashSet<&String> = payloads.iter().collect();
        assert_eq!(unique.len(), payloads.len(), "payloads are unique");
        let decoded: Vec<Event> = payloads
            .iter()
            .flat_map(|p| decode(p).map(|(topic, json)| (topic.to_owned(), parse(json))))
            .map(|(topic, event)| {
                assert_eq!(event.topic().unwrap().as_str(), topic);
                event
            })
            .collect();
        assert_eq!(decoded, events);
    }

    #[test]
    fn an_event_too_large_for_notify_becomes_resync() {
        let huge = join("t", serde_json::json!({ "s": "\"".repeat(4_000) }));
        let payloads = encode(&[huge], || "1".into());
        let decoded: Vec<(&str, Event)> =
            decode(&payloads[0]).map(|(t, j)| (t, parse(j))).collect();
        assert_eq!(decoded, [("t", Event::Resync)]);
    }

    #[test]
    fn malformed_payloads_yield_nothing_past_the_damage() {
        assert_eq!(
            decode("1|5:1:ab").count(),
            0,
            "a truncated piece is not read past its end"
        );
        assert_eq!(decode("no pieces here").count(), 0);
        assert_eq!(parse("not json"), Event::Resync);
    }
}
