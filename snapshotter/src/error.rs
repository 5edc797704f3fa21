//! The error type of the image side, with a kind that maps onto gRPC status codes.
//! Runs in cairnd (the image side).

use std::path::PathBuf;

/// Result alias for the whole crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, in terms a CRI client can act on.
///
/// Every variant carries a message naming the object involved; the daemon maps
/// each variant to a gRPC code (see [`Error::kind`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The named object (image, repository, tag, blob, snapshot) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request itself is malformed (bad reference, bad digest, bad archive).
    #[error("{0}")]
    InvalidArgument(String),
    /// The object already exists.
    #[error("{0}")]
    AlreadyExists(String),
    /// The object is in a state that does not allow the operation.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A remote (the registry) could not be reached or answered with a server error.
    #[error("{0}")]
    Unavailable(String),
    /// The registry refused our credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// The registry sent something we refuse to store: a digest or diff ID that
    /// does not match, a truncated layer, an unsafe tar entry, an unsupported media type.
    #[error("{0}")]
    BadContent(String),
    /// The image filesystem is out of space or inodes.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A local I/O error, with the path it happened on.
    #[error("{context} {}: {source}", path.display())]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The metadata store failed.
    #[error("metadata store: {0}")]
    Store(String),
    /// Anything else.
    #[error("{0}")]
    Internal(String),
}

/// The gRPC-level class of an [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    InvalidArgument,
    AlreadyExists,
    FailedPrecondition,
    Unavailable,
    Unauthenticated,
    ResourceExhausted,
    DataLoss,
    Internal,
}

impl Error {
    /// Wraps an I/O error with what we were doing and where.
    pub fn io(context: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        if source.raw_os_error() == Some(libc::ENOSPC)
            || source.raw_os_error() == Some(libc::EDQUOT)
        {
            let path = path.into();
            return Error::ResourceExhausted(format!(
                "{context} {}: image filesystem is full: {source}",
                path.display()
            ));
        }
        Error::Io {
            context,
            path: path.into(),
            source,
        }
    }

    /// The gRPC class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::InvalidArgument(_) => ErrorKind::InvalidArgument,
            Error::AlreadyExists(_) => ErrorKind::AlreadyExists,
            Error::FailedPrecondition(_) => ErrorKind::FailedPrecondition,
            Error::Unavailable(_) => ErrorKind::Unavailable,
            Error::Unauthenticated(_) => ErrorKind::Unauthenticated,
            Error::ResourceExhausted(_) => ErrorKind::ResourceExhausted,
            Error::BadContent(_) => ErrorKind::DataLoss,
            Error::Io { .. } | Error::Store(_) | Error::Internal(_) => ErrorKind::Internal,
        }
    }

    /// Prefixes the message with more context, keeping the kind.
    pub fn context(self, what: impl std::fmt::Display) -> Self {
        match self {
            Error::NotFound(m) => Error::NotFound(format!("{what}: {m}")),
            Error::InvalidArgument(m) => Error::InvalidArgument(format!("{what}: {m}")),
            Error::AlreadyExists(m) => Error::AlreadyExists(format!("{what}: {m}")),
            Error::FailedPrecondition(m) => Error::FailedPrecondition(format!("{what}: {m}")),
            Error::Unavailable(m) => Error::Unavailable(format!("{what}: {m}")),
            Error::Unauthenticated(m) => Error::Unauthenticated(format!("{what}: {m}")),
            Error::BadContent(m) => Error::BadContent(format!("{what}: {m}")),
            Error::ResourceExhausted(m) => Error::ResourceExhausted(format!("{what}: {m}")),
            Error::Store(m) => Error::Store(format!("{what}: {m}")),
            Error::Internal(m) => Error::Internal(format!("{what}: {m}")),
            e @ Error::Io { .. } => Error::Internal(format!("{what}: {e}")),
        }
    }
}

macro_rules! store_error {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Store(e.to_string())
            }
        }
    )*};
}
store_error!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
