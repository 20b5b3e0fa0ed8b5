//! Taking the store's own parameters out of a connection string, in both
//! of the forms tokio-postgres reads: a `postgres://` URL (parameters in
//! its query) and a libpq key=value string.

use presence_core::{Error, Result};

use crate::config::STORE_PARAMETERS;

/// The parameters tokio-postgres reads (the store's own aside).
pub(crate) const DRIVER_PARAMETERS: &[&str] = &[
    "user",
    "password",
    "dbname",
    "options",
    "application_name",
    "sslnegotiation",
    "host",
    "hostaddr",
    "port",
    "tcp_user_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_retries",
    "target_session_attrs",
    "channel_binding",
    "load_balance_hosts",
];

/// Refuses a parameter neither the store nor tokio-postgres knows, by name.
fn known(key: &str) -> Result<()> {
    if DRIVER_PARAMETERS.contains(&key) {
        return Ok(());
    }
    Err(Error::invalid(
        "url",
        format!(
            "unknown parameter {key:?}: the store takes {STORE_PARAMETERS:?}, tokio-postgres \
             {DRIVER_PARAMETERS:?}"
        ),
    ))
}

/// The connection string without the store's parameters, and those
/// parameters (decoded), in order.
pub(crate) fn split(url: &str) -> Result<(String, Vec<(String, String)>)> {
    let url = url.trim();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        split_url(url)
    } else {
        split_key_values(url)
    }
}

fn split_url(url: &str) -> Result<(String, Vec<(String, String)>)> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), Vec::new()));
    };
    let mut kept = Vec::new();
    let mut ours = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(key, "url")?;
        if STORE_PARAMETERS.contains(&key.as_str()) {
            let field = STORE_PARAMETERS
                .iter()
                .find(|name| **name == key)
                .copied()
                .unwrap_or("url");
            ours.push((key, decode(value, field)?));
        } else {
            known(&key)?;
            kept.push(pair);
        }
    }
    let driver = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((driver, ours))
}

/// Percent-decoding of one URL query component (`+` stays as it is, as
/// tokio-postgres reads it).
fn decode(text: &str, field: &'static str) -> Result<String> {
    let bad = || Error::invalid(field, "has a malformed percent-escape or is not UTF-8");
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3).ok_or_else(bad)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// One `key=value` of a libpq string: where it is in the text, its key and
/// its unquoted value.
pub(crate) struct Pair {
    pub(crate) span: std::ops::Range<usize>,
    pub(crate) key: String,
    pub(crate) value: String,
}

/// The pairs of a key=value string (`key = 'quoted \' value'` allowed).
pub(crate) fn key_values(text: &str) -> Result<Vec<Pair>> {
    let bad =
        |why: &str| Error::invalid("url", format!("is not a Postgres connection string: {why}"));
    let bytes = text.as_bytes();
    let mut pairs = Vec::new();
    let mut i = 0;
    let skip_space = |i: &mut usize| {
        while *i < bytes.len() && bytes[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    loop {
        skip_space(&mut i);
        if i >= bytes.len() {
            return Ok(pairs);
        }
        let start = i;
        while i < bytes.len() && bytes[i] != b'=' && !bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = text[start..i].to_owned();
        skip_space(&mut i);
        if i >= bytes.len() || bytes[i] != b'=' {
            return Err(bad(&format!("parameter {key:?} has no '='")));
        }
        i += 1;
        skip_space(&mut i);
        let mut value = String::new();
        if i < bytes.len() && bytes[i] == b'\'' {
            i += 1;
            loop {
                match bytes.get(i) {
                    None => return Err(bad(&format!("the value of {key:?} has no closing quote"))),
                    Some(b'\'') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') if i + 1 < bytes.len() => {
                        let c = text[i + 1..]
                            .chars()
                            .next()
                            .expect("a character after '\\'");
                        value.push(c);
                        i += 1 + c.len_utf8();
                    }
                    Some(_) => {
                        let c = text[i..].chars().next().expect("a character");
                        value.push(c);
                        i += c.len_utf8();
                    }
                }
            }
        } else {
            while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
                if bytes[i] == b'\\' && i + 1 < bytes.len() {
                    i += 1;
                }
                let c = text[i..].chars().next().expect("a character");
                value.push(c);
                i += c.len_utf8();
            }
        }
        pairs.push(Pair {
            span: start..i,
            key,
            value,
        });
    }
}

fn split_key_values(text: &str) -> Result<(String, Vec<(String, String)>)> {
    let mut kept = Vec::new();
    let mut ours = Vec::new();
    for pair in key_values(text)? {
        if STORE_PARAMETERS.contains(&pair.key.as_str()) {
            ours.push((pair.key, pair.value));
        } else {
            known(&pair.key)?;
            kept.push(&text[pair.span]);
        }
    }
    Ok((kept.join(" "), ours))
}
