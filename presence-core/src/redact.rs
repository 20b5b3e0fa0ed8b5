//! Store URLs with their secrets masked, for messages, logs and `Debug`.

/// What replaces a secret.
pub const MASK: &str = "***";

/// Whether a URL or connection-string parameter holds a secret.
pub fn is_secret_parameter(key: &str) -> bool {
    key.eq_ignore_ascii_case("password") || key.eq_ignore_ascii_case("sslpassword")
}

/// A `scheme://...` URL with every secret replaced by `***`: the password
/// of its user info (`user:password@`, also before a list of hosts) and
/// the values of `password` / `sslpassword` query parameters. Text without
/// `://` is returned as it is: backends with other forms (Postgres'
/// key=value strings) mask those themselves.
///
/// ```
/// use presence_core::redact_url;
/// assert_eq!(
///     redact_url("postgres://app:s3cret@db/main?schema=p&password=x"),
///     "postgres://app:***@db/main?schema=p&password=***"
/// );
/// assert_eq!(redact_url("redis://:s3cret@h1:6379,h2:6379/"), "redis://:***@h1:6379,h2:6379/");
/// assert_eq!(redact_url("sqlite://presence.db"), "sqlite://presence.db");
/// ```
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
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
                    Some((key, _)) if is_secret_parameter(key) => format!("{key}={MASK}"),
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_password_of_a_url_is_masked() {
        for (url, redacted) in [
            (
                "postgres://app:s3cr%40t@db:5432/app?password=x&sslmode=require",
                "postgres://app:***@db:5432/app?password=***&sslmode=require",
            ),
            ("postgresql://app@db/app", "postgresql://app@db/app"),
            (
                "rediss://user:pw@cache:6380/0",
                "rediss://user:***@cache:6380/0",
            ),
            (
                "redis+cluster://:pw@a,b?x=1",
                "redis+cluster://:***@a,b?x=1",
            ),
            ("sqlite:///data/p.db?mode=rw", "sqlite:///data/p.db?mode=rw"),
            ("sqlite::memory:", "sqlite::memory:"),
        ] {
            assert_eq!(redact_url(url), redacted);
        }
    }
}
