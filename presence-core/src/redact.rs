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
    // Where the user info ends differs between parsers: the `url` crate
    // (redis-rs) takes the last `@` before the path, tokio-postgres the first
    // `@` anywhere (so a password may hold a raw `/` or `?`). Mask up to
    // whichever is further, so no parser's password is ever shown.
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let user_info_end = [rest[..authority_end].rfind('@'), rest.find('@')]
        .into_iter()
        .flatten()
        .max();
    let rest = match user_info_end {
        Some(at) => match rest[..at].split_once(':') {
            Some((user, _password)) => format!("{user}:{MASK}@{}", &rest[at + 1..]),
            None => rest.to_owned(),
        },
        None => rest.to_owned(),
    };
    let rest = match rest.split_once('?') {
        Some((before, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if is_secret_parameter(key) => format!("{key}={MASK}"),
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{before}?{}", query.join("&"))
        }
        None => rest,
    };
    format!("{scheme}://{rest}")
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
            // tokio-postgres reads up to the first `@`: a raw `/` or `?`
            // in the password is still the password.
            ("postgres://app:pa/ss@db/x", "postgres://app:***@db/x"),
            ("postgres://app:pa?ss@db/x", "postgres://app:***@db/x"),
            // The `url` crate reads up to the last `@` before the path.
            ("redis://u:p@ss@h:6379/0", "redis://u:***@h:6379/0"),
            (
                "postgres://db/app?options=a@b",
                "postgres://db/app?options=a@b",
            ),
            (
                "postgres://db/app?password=x&options=a@b",
                "postgres://db/app?password=***&options=a@b",
            ),
        ] {
            assert_eq!(redact_url(url), redacted);
        }
    }
}
