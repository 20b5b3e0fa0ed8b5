//! Connection strings with their secrets masked, for `Debug`, errors and
//! logs.

use crate::params::key_values;

const MASK: &str = "***";

/// `text` (a `postgres://` URL or a key=value string) with every password
/// replaced by `***`: the one in a URL's user info, and any `password=`
/// parameter. A string that cannot be read at all is masked whole.
pub fn redact(text: &str) -> String {
    let trimmed = text.trim();
    if let Some(rest) = trimmed
        .strip_prefix("postgres://")
        .map(|rest| ("postgres://", rest))
        .or_else(|| {
            trimmed
                .strip_prefix("postgresql://")
                .map(|rest| ("postgresql://", rest))
        })
    {
        return redact_url(rest.0, rest.1);
    }
    match key_values(trimmed) {
        Ok(pairs) => pairs
            .iter()
            .map(|pair| {
                if is_secret(&pair.key) {
                    format!("{}={MASK}", pair.key)
                } else {
                    trimmed[pair.span.clone()].to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join(" "),
        Err(_) if trimmed.contains("password") || trimmed.contains('@') => MASK.to_owned(),
        Err(_) => trimmed.to_owned(),
    }
}

fn is_secret(key: &str) -> bool {
    key.eq_ignore_ascii_case("password") || key.eq_ignore_ascii_case("sslpassword")
}

fn redact_url(scheme: &str, rest: &str) -> String {
    let (authority_end, _) = rest
        .char_indices()
        .find(|(_, c)| *c == '/' || *c == '?')
        .unwrap_or((rest.len(), ' '));
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((user_info, hosts)) => match user_info.split_once(':') {
            Some((user, _password)) => format!("{user}:{MASK}@{hosts}"),
            None => format!("{user_info}@{hosts}"),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if is_secret(key) => format!("{key}={MASK}"),
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}{authority}{tail}")
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_masked_in_every_form() {
        assert_eq!(
            redact("postgres://app:s3cr%40t@db:5432/app?password=x&sslmode=require"),
            "postgres://app:***@db:5432/app?password=***&sslmode=require"
        );
        assert_eq!(redact("postgresql://app@db/app"), "postgresql://app@db/app");
        assert_eq!(
            redact("host=db password='a b' user=app"),
            "host=db password=*** user=app"
        );
        assert_eq!(redact("host=db password=secret"), "host=db password=***");
        assert_eq!(redact("host=db password='unterminated"), "***");
    }
}
