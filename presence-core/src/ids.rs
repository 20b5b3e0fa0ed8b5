//! Validated identifiers: topics, members and connections.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{Error, Result};

/// The longest id, in bytes, that every backend accepts.
pub const MAX_ID_BYTES: usize = 255;

/// Checks the id rule of the contract: UTF-8 (guaranteed by `&str`), 1 to
/// [`MAX_ID_BYTES`] bytes, no NUL.
fn validate_id(field: &'static str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if value.len() > MAX_ID_BYTES {
        return Err(Error::invalid(
            field,
            format!("is {} bytes long, the limit is {MAX_ID_BYTES}", value.len()),
        ));
    }
    if let Some(at) = value.find('\0') {
        return Err(Error::invalid(
            field,
            format!("contains a NUL character at byte {at}"),
        ));
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        ///
        /// Valid by construction: UTF-8, 1 to 255 bytes, no NUL. Compared,
        /// ordered and stored byte for byte (no trimming, no case folding).
        /// Cloning is cheap (a reference count).
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Arc<str>);

        impl $name {
            #[doc = concat!("Validates `value` as a ", $field, " id; the error names the field `", $field, "`.")]
            pub fn new(value: impl AsRef<str>) -> Result<Self> {
                let value = value.as_ref();
                validate_id($field, value)?;
                Ok(Self(Arc::from(value)))
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(value: &str) -> Result<Self> {
                Self::new(value)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = Error;
            fn try_from(value: &str) -> Result<Self> {
                Self::new(value)
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(value: String) -> Result<Self> {
                Self::new(value)
            }
        }

        impl TryFrom<&String> for $name {
            type Error = Error;
            fn try_from(value: &String) -> Result<Self> {
                Self::new(value)
            }
        }

        impl From<&$name> for $name {
            fn from(value: &$name) -> Self {
                value.clone()
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
                let value = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                Self::new(value).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// What people are present in: a room, a document, `/chat/42`.
    Topic,
    "topic"
);
id_type!(
    /// Who is present, usually a user id. A member with several connections
    /// counts once.
    MemberId,
    "member"
);
id_type!(
    /// One client of a member: a browser tab, a socket, a device.
    ConnectionId,
    "connection"
);

/// One presence: `(topic, member, connection)`.
///
/// Ordered by topic, then member, then connection, byte for byte.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct PresenceKey {
    /// What the member is present in.
    pub topic: Topic,
    /// Who is present.
    pub member: MemberId,
    /// Which of the member's clients.
    pub connection: ConnectionId,
}

impl PresenceKey {
    /// Builds a key from anything that converts into the three ids: string
    /// slices, `String`s, or ids already validated.
    ///
    /// ```
    /// # use presence_core::PresenceKey;
    /// let key = PresenceKey::new("/chat/42", "alice", "tab-1")?;
    /// assert_eq!(key.member.as_str(), "alice");
    /// let err = PresenceKey::new("", "alice", "tab-1").unwrap_err();
    /// assert_eq!(err.invalid_field(), Some("topic"));
    /// # Ok::<(), presence_core::Error>(())
    /// ```
    pub fn new<T, M, C>(topic: T, member: M, connection: C) -> Result<Self>
    where
        T: TryInto<Topic>,
        M: TryInto<MemberId>,
        C: TryInto<ConnectionId>,
        Error: From<T::Error> + From<M::Error> + From<C::Error>,
    {
        Ok(Self {
            topic: topic.try_into()?,
            member: member.try_into()?,
            connection: connection.try_into()?,
        })
    }
}

impl fmt::Display for PresenceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?}/{:?}/{:?}",
            self.topic, self.member, self.connection
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_input_rules() {
        assert!(Topic::new("a").is_ok());
        assert!(Topic::new("x".repeat(255)).is_ok());
        let too_long = Topic::new("x".repeat(256)).unwrap_err();
        assert_eq!(too_long.invalid_field(), Some("topic"));
        assert!(too_long.to_string().contains("256 bytes"));
        let empty = MemberId::new("").unwrap_err();
        assert_eq!(empty.invalid_field(), Some("member"));
        let nul = ConnectionId::new("a\0b").unwrap_err();
        assert_eq!(nul.invalid_field(), Some("connection"));
        assert!(nul.to_string().contains("NUL"));
        // 255 bytes of multi-byte characters is fine; 256 is not.
        assert!(Topic::new("é".repeat(127)).is_ok());
        assert!(Topic::new("é".repeat(128)).is_err());
    }

    #[test]
    fn ids_are_byte_exact() {
        assert_ne!(
            MemberId::new("Alice").unwrap(),
            MemberId::new("alice").unwrap()
        );
        assert_eq!(Topic::new(" room ").unwrap().as_str(), " room ");
    }

    #[test]
    fn ids_deserialize_with_validation() {
        let key: PresenceKey =
            serde_json::from_str(r#"{"topic":"t","member":"m","connection":"c"}"#).unwrap();
        assert_eq!(key, PresenceKey::new("t", "m", "c").unwrap());
        let err =
            serde_json::from_str::<PresenceKey>(r#"{"topic":"","member":"m","connection":"c"}"#)
                .unwrap_err();
        assert!(err.to_string().contains("invalid topic"));
    }
}
