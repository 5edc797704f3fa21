//! cairnd's domain error: what the lifecycle, the control API and the image side return,
//! with a kind that says what the caller did wrong or what the node lacks, and a message
//! naming the object. Only the CRI layer (module `cri`) turns it into a gRPC status;
//! nothing below it knows gRPC.
//! Runs in cairnd.

use cairn_snapshotter::error::ErrorKind;

/// What kind of failure, in the terms CRI clients act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    NotFound,
    AlreadyExists,
    InvalidArgument,
    /// The object is in the wrong state, or the node is not set up for the request.
    FailedPrecondition,
    /// A dependency (a registry, a pod's shim) cannot be reached.
    Unavailable,
    DeadlineExceeded,
    ResourceExhausted,
    Unauthenticated,
    DataLoss,
    Internal,
}

/// A failure and its message (which names the object).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    code: Code,
    message: String,
}

impl Error {
    pub fn new(code: Code, message: impl Into<String>) -> Error {
        Error {
            code,
            message: message.into(),
        }
    }

    pub fn code(&self) -> Code {
        self.code
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn not_found(m: impl Into<String>) -> Error {
        Error::new(Code::NotFound, m)
    }

    pub fn already_exists(m: impl Into<String>) -> Error {
        Error::new(Code::AlreadyExists, m)
    }

    pub fn invalid_argument(m: impl Into<String>) -> Error {
        Error::new(Code::InvalidArgument, m)
    }

    pub fn failed_precondition(m: impl Into<String>) -> Error {
        Error::new(Code::FailedPrecondition, m)
    }

    pub fn unavailable(m: impl Into<String>) -> Error {
        Error::new(Code::Unavailable, m)
    }

    pub fn deadline_exceeded(m: impl Into<String>) -> Error {
        Error::new(Code::DeadlineExceeded, m)
    }

    pub fn internal(m: impl Into<String>) -> Error {
        Error::new(Code::Internal, m)
    }
}

/// The image side's errors keep their kind and message.
impl From<cairn_snapshotter::Error> for Error {
    fn from(e: cairn_snapshotter::Error) -> Error {
        let code = match e.kind() {
            ErrorKind::NotFound => Code::NotFound,
            ErrorKind::InvalidArgument => Code::InvalidArgument,
            ErrorKind::AlreadyExists => Code::AlreadyExists,
            ErrorKind::FailedPrecondition => Code::FailedPrecondition,
            ErrorKind::Unavailable => Code::Unavailable,
            ErrorKind::Unauthenticated => Code::Unauthenticated,
            ErrorKind::ResourceExhausted => Code::ResourceExhausted,
            ErrorKind::DataLoss => Code::DataLoss,
            ErrorKind::Internal => Code::Internal,
        };
        Error::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_errors_keep_kind_and_message() {
        let e = Error::from(cairn_snapshotter::Error::NotFound("image x".into()));
        assert_eq!(e.code(), Code::NotFound);
        assert!(e.message().contains("image x"));
    }
}
