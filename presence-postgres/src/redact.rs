//! Connection strings with their secrets masked, for `Debug`, errors and
//! logs.

use crate::params::key_values;
use presence_core::{MASK, is_secret_parameter, redact_url};

/// `text` (a `postgres://` URL or a key=value string) with every password
/// replaced by `***`: the one in a URL's user info, and any `password=`
/// parameter. A string that cannot be read at all is masked whole.
pub fn redact(text: &str) -> String {
    let trimmed = text.trim();
    if trimmed.contains("://") {
        return redact_url(trimmed);
    }
    match key_values(trimmed) {
        Ok(pairs) => pairs
            .iter()
            .map(|pair| {
                if is_secret_parameter(&pair.key) {
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
