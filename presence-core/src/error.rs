use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;

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
    /// The store (or the helper) was closed with `close()`: it takes no more
    /// calls. Nothing was changed.
    #[error("the {backend} store is closed")]
    Closed {
        /// Which backend (`memory`, `sqlite`, `postgres`, ...), or the
        /// helper, that was closed.
        backend: &'static str,
    },
    /// The storage behind the store failed: a lost connection, a full disk, a
    /// file that is not a database, a schema newer than this code knows.
    ///
    /// `source` keeps the driver's own error; walk
    /// [`std::error::Error::source`] to reach it (a server's SQLSTATE, an
    /// I/O error's kind). [`Error::chain`] prints the whole chain.
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

    /// The error and each of its causes in turn, joined by `": "`: what a
    /// log line or a command-line tool should print, since the top line of a
    /// driver's error is often only "db error".
    ///
    /// ```
    /// # use presence_core::Error;
    /// let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "presence.db: permission denied");
    /// let err = Error::backend("sqlite", io);
    /// assert_eq!(err.chain().to_string(), "sqlite backend: presence.db: permission denied");
    /// ```
    pub fn chain(&self) -> Chain<'_> {
        Chain(self)
    }

    /// Makes this error shareable by several callers: a batch or a group
    /// commit that fails fails all of its callers with the same error.
    /// Each [`SharedError::error`] is a full [`Error`] whose source chain
    /// reaches the original (typed) cause.
    pub fn share(self) -> SharedError {
        SharedError(Arc::new(self))
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

/// An [`Error`] and its causes, displayed on one line; see [`Error::chain`].
#[derive(Debug)]
pub struct Chain<'a>(&'a Error);

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut shown = self.0.to_string();
        let mut cause = std::error::Error::source(self.0);
        while let Some(error) = cause {
            let text = error.to_string();
            // Wrappers that repeat their source's text add nothing.
            if !shown.ends_with(&text) {
                write!(f, ": {text}")?;
                shown = text;
            }
            cause = error.source();
        }
        Ok(())
    }
}

/// One failure shared by several callers; see [`Error::share`].
#[derive(Clone, Debug)]
pub struct SharedError(Arc<Error>);

impl SharedError {
    /// The failure, for one more caller. A [`Error::Backend`] keeps its
    /// backend and its cause: the source is a [`SharedSource`] that reads
    /// and chains exactly like the original source, without repeating the
    /// backend's name.
    pub fn error(&self) -> Error {
        match &*self.0 {
            Error::InvalidInput { field, reason } => Error::InvalidInput {
                field,
                reason: reason.clone(),
            },
            Error::TopicFull { topic, max_members } => Error::TopicFull {
                topic: topic.clone(),
                max_members: *max_members,
            },
            Error::NotFound { topic } => Error::NotFound {
                topic: topic.clone(),
            },
            Error::Forbidden { topic, reason } => Error::Forbidden {
                topic: topic.clone(),
                reason: reason.clone(),
            },
            Error::Closed { backend } => Error::Closed { backend },
            Error::Backend { backend, .. } => Error::Backend {
                backend,
                source: Box::new(SharedSource(self.0.clone())),
            },
        }
    }
}

/// The source of an [`Error::Backend`] handed to several callers: displays
/// as the original source and chains to its causes.
#[derive(Debug)]
pub struct SharedSource(Arc<Error>);

impl SharedSource {
    /// The original source, to downcast to the driver's error type.
    pub fn original(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        match &*self.0 {
            Error::Backend { source, .. } => source.as_ref(),
            other => other,
        }
    }
}

impl fmt::Display for SharedSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.original(), f)
    }
}

impl std::error::Error for SharedSource {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.original().source()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("db error")]
    struct Driver(#[source] std::io::Error);

    #[test]
    fn a_shared_backend_error_keeps_its_typed_cause_and_one_prefix() {
        let cause = std::io::Error::new(std::io::ErrorKind::StorageFull, "57P03: starting up");
        let shared = Error::backend("postgres", Driver(cause)).share();
        for _ in 0..2 {
            let error = shared.error();
            assert_eq!(error.to_string(), "postgres backend: db error");
            assert_eq!(
                error.chain().to_string(),
                "postgres backend: db error: 57P03: starting up"
            );
            let Error::Backend { source, .. } = &error else {
                panic!("{error:?}")
            };
            let shared = source.downcast_ref::<SharedSource>().unwrap();
            assert!(shared.original().downcast_ref::<Driver>().is_some());
            let io = std::error::Error::source(&error)
                .and_then(|s| s.source())
                .and_then(|s| s.downcast_ref::<std::io::Error>())
                .unwrap();
            assert_eq!(io.kind(), std::io::ErrorKind::StorageFull);
        }
        let full = Error::TopicFull {
            topic: Topic::new("t").unwrap(),
            max_members: 3,
        }
        .share();
        assert!(matches!(
            full.error(),
            Error::TopicFull { max_members: 3, .. }
        ));
    }

    #[test]
    fn the_chain_skips_wrappers_that_repeat_their_cause() {
        let inner = std::io::Error::other("disk full");
        let error = Error::backend("sqlite", inner);
        assert_eq!(error.chain().to_string(), "sqlite backend: disk full");
        assert_eq!(
            Error::Closed { backend: "memory" }.chain().to_string(),
            "the memory store is closed"
        );
    }
}
