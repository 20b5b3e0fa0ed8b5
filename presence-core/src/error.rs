use std::convert::Infallible;

use crate::Topic;

/// The result type of every fallible call in this workspace.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything a [`PresenceStore`](crate::PresenceStore) call can fail with.
///
/// A call that fails with [`Error::InvalidInput`], [`Error::TopicFull`],
/// [`Error::NotFound`] or [`Error::Forbidden`] has changed nothing and
/// emitted no event.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An argument broke one of the input rules; `field` names the argument
    /// (`topic`, `member`, `connection`, `meta`, `keys`) and `reason` the rule.
    #[error("invalid {field}: {reason}")]
    InvalidInput {
        /// The argument that was rejected.
        field: &'static str,
        /// The rule it broke, in words.
        reason: String,
    },
    /// `join_limited` refused a member that is not yet present because the
    /// topic already holds `max_members` members.
    #[error("topic {topic:?} is full: it already has {max_members} members")]
    TopicFull {
        /// The topic that is full.
        topic: Topic,
        /// The limit the call was made with.
        max_members: u32,
    },
    /// No such channel, or one the viewer may not see: the two are
    /// deliberately the same error, so a refusal never reveals that a
    /// channel exists. Returned by channel policies, never by a store.
    #[error("channel {topic:?} not found")]
    NotFound {
        /// The topic asked for.
        topic: Topic,
    },
    /// The viewer may see the channel but not do this in it (enter it, or
    /// enter it as someone else). Returned by channel policies, never by a
    /// store; nothing was changed.
    #[error("not allowed in channel {topic:?}: {reason}")]
    Forbidden {
        /// The topic.
        topic: Topic,
        /// What was refused, in words.
        reason: String,
    },
    /// The storage behind the store failed: a lost connection, a full disk, a
    /// file that is not a database, a schema newer than this code knows.
    #[error("{backend} backend: {source}")]
    Backend {
        /// Which backend failed (`memory`, `sqlite`, `postgres`).
        backend: &'static str,
        /// What went wrong underneath.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

impl Error {
    /// An [`Error::InvalidInput`] for `field` breaking `reason`.
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidInput {
            field,
            reason: reason.into(),
        }
    }

    /// An [`Error::Backend`] wrapping `source`.
    pub fn backend(
        backend: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Error::Backend {
            backend,
            source: source.into(),
        }
    }

    /// The field an [`Error::InvalidInput`] names, if this is one.
    pub fn invalid_field(&self) -> Option<&'static str> {
        match self {
            Error::InvalidInput { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// Lets the id constructors take already-validated ids: converting a
/// [`Topic`] into a [`Topic`] cannot fail.
impl From<Infallible> for Error {
    fn from(never: Infallible) -> Self {
        match never {}
    }
}
