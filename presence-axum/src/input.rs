//! Reading requests: every rule is checked before anything changes, and a
//! broken one is a `400` naming the request's field.

use std::collections::BTreeSet;

use presence::serde_json::{self, Map, Value};
use presence::{ConnectionId, Meta, Topic};

use crate::error::ApiError;

/// `/update`'s body.
#[derive(Debug)]
pub(crate) struct UpdateRequest {
    pub(crate) client: ConnectionId,
    /// Each channel to be present in, with the meta to set (`None`: keep).
    pub(crate) present: Vec<(Topic, Option<Meta>)>,
    pub(crate) leave: Vec<Topic>,
}

/// `/leave`'s body.
#[derive(Debug)]
pub(crate) struct LeaveRequest {
    pub(crate) client: ConnectionId,
    pub(crate) leave: Vec<Topic>,
    pub(crate) token: Option<String>,
}

/// The query of `/state` and `/events`.
#[derive(Debug)]
pub(crate) struct ChannelsQuery {
    pub(crate) channels: Vec<Topic>,
    pub(crate) last_event_id: Option<String>,
}

fn topic(field: &str, index: usize, text: &str) -> Result<Topic, ApiError> {
    Topic::new(text).map_err(|error| {
        let reason = match &error {
            presence::Error::InvalidInput { reason, .. } => reason.clone(),
            other => other.to_string(),
        };
        ApiError::bad_input(
            field,
            format!("{field}[{index}] is not a channel name: {reason}"),
        )
    })
}

fn client_id(text: &str) -> Result<ConnectionId, ApiError> {
    ConnectionId::new(text).map_err(|error| {
        let reason = match &error {
            presence::Error::InvalidInput { reason, .. } => reason.clone(),
            other => other.to_string(),
        };
        ApiError::bad_input(
            "client_id",
            format!("client_id is not a connection id: {reason}"),
        )
    })
}

/// Distinct topics in the order first named, at most `max`.
fn distinct(
    field: &str,
    names: impl IntoIterator<Item = String>,
    max: usize,
) -> Result<Vec<Topic>, ApiError> {
    let mut seen = BTreeSet::new();
    let mut topics = Vec::new();
    for (index, name) in names.into_iter().enumerate() {
        let topic = topic(field, index, &name)?;
        if seen.insert(topic.clone()) {
            if topics.len() == max {
                return Err(ApiError::bad_input(
                    field,
                    format!("at most {max} channels per request"),
                ));
            }
            topics.push(topic);
        }
    }
    Ok(topics)
}

/// `channel=a&channel=b` (at least one, at most `max` distinct), and
/// `last_event_id`; parameters starting with `_` (cache busters) are
/// ignored, any other is refused.
pub(crate) fn channels_query(query: Option<&str>, max: usize) -> Result<ChannelsQuery, ApiError> {
    let mut names = Vec::new();
    let mut last_event_id = None;
    for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match name.as_ref() {
            "channel" => names.push(value.into_owned()),
            "last_event_id" => last_event_id = Some(value.into_owned()),
            other if other.starts_with('_') => {}
            other => {
                return Err(ApiError::bad_input(
                    other,
                    format!("unknown query parameter {other:?} (expected channel, last_event_id)"),
                ));
            }
        }
    }
    if names.is_empty() {
        return Err(ApiError::bad_input(
            "channel",
            "name at least one channel: ?channel=NAME",
        ));
    }
    Ok(ChannelsQuery {
        channels: distinct("channel", names, max)?,
        last_event_id,
    })
}

fn strings(field: &str, value: Value) -> Result<Vec<String>, ApiError> {
    let Value::Array(items) = value else {
        return Err(ApiError::bad_input(
            field,
            format!("{field} must be an array of channel names"),
        ));
    };
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| match item {
            Value::String(name) => Ok(name),
            _ => Err(ApiError::bad_input(
                field,
                format!("{field}[{index}] must be a string"),
            )),
        })
        .collect()
}

/// `{ client_id, present?: [..], leave?: [..], meta?: { channel: {..} } }`.
pub(crate) fn update_request(
    body: &[u8],
    max_channels: usize,
    max_meta_bytes: usize,
) -> Result<UpdateRequest, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|error| ApiError::bad_input("body", format!("not JSON: {error}")))?;
    let Value::Object(fields) = value else {
        return Err(ApiError::bad_input("body", "must be a JSON object"));
    };
    let mut client = None;
    let mut present = Vec::new();
    let mut leave = Vec::new();
    let mut metas = Map::new();
    for (name, value) in fields {
        match name.as_str() {
            "client_id" => match value {
                Value::String(text) => client = Some(client_id(&text)?),
                _ => return Err(ApiError::bad_input("client_id", "must be a string")),
            },
            "present" => present = strings("present", value)?,
            "leave" => leave = strings("leave", value)?,
            "meta" => match value {
                Value::Object(map) => metas = map,
                Value::Null => {}
                _ => {
                    return Err(ApiError::bad_input(
                        "meta",
                        "must be an object of channel name to meta",
                    ));
                }
            },
            other => {
                return Err(ApiError::bad_input(
                    other,
                    format!("unknown field {other:?} (expected client_id, present, leave, meta)"),
                ));
            }
        }
    }
    let client = client.ok_or_else(|| ApiError::bad_input("client_id", "is required"))?;
    let present = distinct("present", present, max_channels)?;
    let leave = distinct("leave", leave, max_channels)?;
    if let Some(both) = leave.iter().find(|topic| present.contains(topic)) {
        return Err(ApiError::bad_input(
            "leave",
            format!("{both} is both in present and in leave"),
        ));
    }
    let mut present: Vec<(Topic, Option<Meta>)> = present.into_iter().map(|t| (t, None)).collect();
    for (name, value) in metas {
        let Some((_, slot)) = present.iter_mut().find(|(topic, _)| topic.as_str() == name) else {
            return Err(ApiError::bad_input(
                "meta",
                format!("meta for {name:?}, which is not in present"),
            ));
        };
        let meta = Meta::from_value(value)
            .and_then(|meta| meta.check_size(max_meta_bytes).map(|()| meta))
            .map_err(|error| match error {
                presence::Error::InvalidInput { reason, .. } => {
                    ApiError::bad_input("meta", format!("meta of {name:?}: {reason}"))
                }
                other => ApiError::bad_input("meta", other.to_string()),
            })?;
        *slot = Some(meta);
    }
    Ok(UpdateRequest {
        client,
        present,
        leave,
    })
}

/// What `navigator.sendBeacon` sends: form-encoded (`client_id=..&leave=a
/// &leave=b&token=..`, from `URLSearchParams`), or plain text holding the
/// same form or a JSON object `{ client_id, leave: [..], token? }`.
pub(crate) fn leave_request(
    content_type: Option<&str>,
    body: &[u8],
    max_channels: usize,
) -> Result<LeaveRequest, ApiError> {
    let essence = content_type
        .and_then(|value| value.split(';').next())
        .map(|value| value.trim().to_ascii_lowercase());
    let json = match essence.as_deref() {
        Some("application/x-www-form-urlencoded") => false,
        Some("application/json") => true,
        None | Some("text/plain") => body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{'),
        Some(other) => {
            return Err(ApiError::bad_input(
                "body",
                format!(
                    "content type {other:?}: send a form (URLSearchParams), plain text or JSON"
                ),
            ));
        }
    };
    let (client, names, token) = if json {
        leave_json(body)?
    } else {
        leave_form(body)?
    };
    let client = client.ok_or_else(|| ApiError::bad_input("client_id", "is required"))?;
    Ok(LeaveRequest {
        client: client_id(&client)?,
        leave: distinct("leave", names, max_channels)?,
        token,
    })
}

type LeaveFields = (Option<String>, Vec<String>, Option<String>);

fn leave_form(body: &[u8]) -> Result<LeaveFields, ApiError> {
    let (mut client, mut names, mut token) = (None, Vec::new(), None);
    for (name, value) in form_urlencoded::parse(body) {
        match name.as_ref() {
            "client_id" => client = Some(value.into_owned()),
            "leave" => names.push(value.into_owned()),
            "token" => token = Some(value.into_owned()),
            other => {
                return Err(ApiError::bad_input(
                    other,
                    format!("unknown field {other:?} (expected client_id, leave, token)"),
                ));
            }
        }
    }
    Ok((client, names, token))
}

fn leave_json(body: &[u8]) -> Result<LeaveFields, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|error| ApiError::bad_input("body", format!("not JSON: {error}")))?;
    let Value::Object(fields) = value else {
        return Err(ApiError::bad_input("body", "must be a JSON object"));
    };
    let (mut client, mut names, mut token) = (None, Vec::new(), None);
    for (name, value) in fields {
        match (name.as_str(), value) {
            ("client_id", Value::String(text)) => client = Some(text),
            ("client_id", _) => return Err(ApiError::bad_input("client_id", "must be a string")),
            ("leave", value) => names = strings("leave", value)?,
            ("token", Value::String(text)) => token = Some(text),
            ("token", _) => return Err(ApiError::bad_input("token", "must be a string")),
            (other, _) => {
                return Err(ApiError::bad_input(
                    other,
                    format!("unknown field {other:?} (expected client_id, leave, token)"),
                ));
            }
        }
    }
    Ok((client, names, token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(result: Result<impl std::fmt::Debug, ApiError>) -> String {
        result.unwrap_err().field().unwrap().to_owned()
    }

    #[test]
    fn update_bodies() {
        let ok = update_request(
            br#"{"client_id":"tab","present":["a","b","a"],"leave":["c"],"meta":{"a":{"typing":true}}}"#,
            50,
            4096,
        )
        .unwrap();
        assert_eq!(ok.present.len(), 2, "repeated names count once");
        assert!(ok.present[0].1.is_some() && ok.present[1].1.is_none());
        assert_eq!(ok.leave.len(), 1);

        let cases: &[(&[u8], &str)] = &[
            (b"nope", "body"),
            (b"[]", "body"),
            (br#"{"present":["a"]}"#, "client_id"),
            (br#"{"client_id":""}"#, "client_id"),
            (br#"{"client_id":7}"#, "client_id"),
            (br#"{"client_id":"t","present":"a"}"#, "present"),
            (br#"{"client_id":"t","present":[""]}"#, "present"),
            (br#"{"client_id":"t","present":["a\u0000"]}"#, "present"),
            (br#"{"client_id":"t","leave":[1]}"#, "leave"),
            (
                br#"{"client_id":"t","present":["a"],"leave":["a"]}"#,
                "leave",
            ),
            (br#"{"client_id":"t","meta":{"a":{}}}"#, "meta"),
            (
                br#"{"client_id":"t","present":["a"],"meta":{"a":[1]}}"#,
                "meta",
            ),
            (br#"{"client_id":"t","present":["a"],"meta":[]}"#, "meta"),
            (br#"{"client_id":"t","presnt":["a"]}"#, "presnt"),
        ];
        for (body, expected) in cases {
            let got = field(update_request(body, 50, 4096));
            assert_eq!(&got, expected, "{}", String::from_utf8_lossy(body));
        }
        let big = format!(
            r#"{{"client_id":"t","present":["a"],"meta":{{"a":{{"x":"{}"}}}}}}"#,
            "y".repeat(100)
        );
        assert_eq!(field(update_request(big.as_bytes(), 50, 64)), "meta");
        let many: Vec<String> = (0..51).map(|i| format!("\"c{i}\"")).collect();
        let body = format!(r#"{{"client_id":"t","present":[{}]}}"#, many.join(","));
        assert_eq!(field(update_request(body.as_bytes(), 50, 4096)), "present");
    }

    #[test]
    fn queries() {
        let q = channels_query(Some("channel=a&channel=b%2Fc&_=1&last_event_id=x.1"), 50).unwrap();
        assert_eq!(q.channels.len(), 2);
        assert_eq!(q.channels[1].as_str(), "b/c");
        assert_eq!(q.last_event_id.as_deref(), Some("x.1"));
        assert_eq!(field(channels_query(None, 50)), "channel");
        assert_eq!(field(channels_query(Some("channel="), 50)), "channel");
        assert_eq!(field(channels_query(Some("channels=a"), 50)), "channels");
        let many: Vec<String> = (0..51).map(|i| format!("channel=c{i}")).collect();
        assert_eq!(field(channels_query(Some(&many.join("&")), 50)), "channel");
        let repeated: Vec<String> = (0..60).map(|_| "channel=same".to_owned()).collect();
        assert_eq!(
            channels_query(Some(&repeated.join("&")), 50)
                .unwrap()
                .channels
                .len(),
            1
        );
    }

    #[test]
    fn beacons() {
        let form = leave_request(
            Some("application/x-www-form-urlencoded;charset=UTF-8"),
            b"client_id=tab&leave=a&leave=b&token=s3cret",
            50,
        )
        .unwrap();
        assert_eq!(form.leave.len(), 2);
        assert_eq!(form.token.as_deref(), Some("s3cret"));
        let text = leave_request(
            Some("text/plain;charset=UTF-8"),
            b"client_id=tab&leave=a",
            50,
        )
        .unwrap();
        assert_eq!(text.leave.len(), 1);
        let json = leave_request(
            Some("text/plain"),
            br#" {"client_id":"tab","leave":["a"]}"#,
            50,
        )
        .unwrap();
        assert_eq!(json.leave[0].as_str(), "a");
        assert_eq!(field(leave_request(None, b"leave=a", 50)), "client_id");
        assert_eq!(
            field(leave_request(None, b"client_id=t&leave=", 50)),
            "leave"
        );
        assert_eq!(field(leave_request(None, b"client_id=t&x=1", 50)), "x");
        assert_eq!(field(leave_request(Some("image/png"), b"", 50)), "body");
    }
}
