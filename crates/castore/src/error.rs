//! [`Error`]: the one error type of the services, and its explicit mapping to and
//! from gRPC status codes.

use crate::{B3Digest, DigestLenError, DirectoryError};

/// What kind of failure an [`Error`] is, independent of where it happened (locally or
/// on a gRPC server). Conformance tests compare kinds across backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Something asked for does not exist.
    NotFound,
    /// The caller's input is malformed or inconsistent.
    InvalidArgument,
    /// Stored data does not hash to its digest.
    Corrupt,
    /// The caller's input is larger than the server accepts, or the server's
    /// storage is full.
    ResourceExhausted,
    /// Storage, I/O or transport failure; may succeed on retry.
    Internal,
    /// Something the service depends on outside itself (an upstream cache it
    /// pulls from) failed or is down; may succeed later.
    Unavailable,
}

/// Errors of the blob and directory services.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An absent blob or directory where one is required.
    #[error("{what} {digest} not found")]
    NotFound {
        /// "blob" or "directory".
        what: &'static str,
        /// What was asked for.
        digest: B3Digest,
    },
    /// A malformed digest from the caller.
    #[error("invalid digest: {0}")]
    InvalidDigest(#[from] DigestLenError),
    /// A malformed directory, or a closure that does not hold together.
    #[error("invalid directory #{index}: {source}")]
    InvalidDirectory {
        /// Position in the stream or closure (0-based).
        index: usize,
        /// The problem.
        #[source]
        source: DirectoryError,
    },
    /// Other malformed input from the caller.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Data read back does not hash to what was asked for.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// A storage backend failed.
    #[error("storage error: {0}")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// An I/O failure.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// What was asked for depends on a source outside the store (an upstream
    /// cache) that failed, timed out or sent what was refused.
    #[error("{0}")]
    Unavailable(String),
    /// A gRPC server answered with an error status.
    #[error("the server answered {}: {}", code_name(.0.code()), .0.message())]
    Remote(tonic::Status),
    /// Could not connect to a gRPC server.
    #[error("transport error: {0}")]
    Transport(#[from] tonic::transport::Error),
}

impl Error {
    /// The kind of failure, comparable across backends.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::InvalidDirectory {
                source: DirectoryError::TooManyEntries { .. },
                ..
            } => ErrorKind::ResourceExhausted,
            Error::InvalidDigest(_)
            | Error::InvalidDirectory { .. }
            | Error::InvalidArgument(_) => ErrorKind::InvalidArgument,
            Error::Corrupt(_) => ErrorKind::Corrupt,
            Error::Unavailable(_) => ErrorKind::Unavailable,
            Error::Storage(e) if storage_full(e.as_ref()) => ErrorKind::ResourceExhausted,
            Error::Storage(_) | Error::Transport(_) => ErrorKind::Internal,
            Error::Io(e) if storage_full(e) => ErrorKind::ResourceExhausted,
            Error::Io(e) => match e.kind() {
                std::io::ErrorKind::InvalidData => ErrorKind::Corrupt,
                std::io::ErrorKind::FileTooLarge | std::io::ErrorKind::StorageFull => {
                    ErrorKind::ResourceExhausted
                }
                std::io::ErrorKind::InvalidInput => ErrorKind::InvalidArgument,
                std::io::ErrorKind::NotFound => ErrorKind::NotFound,
                _ => ErrorKind::Internal,
            },
            Error::Remote(status) => match status.code() {
                tonic::Code::NotFound => ErrorKind::NotFound,
                tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => {
                    ErrorKind::InvalidArgument
                }
                tonic::Code::DataLoss => ErrorKind::Corrupt,
                tonic::Code::ResourceExhausted => ErrorKind::ResourceExhausted,
                _ => ErrorKind::Internal,
            },
        }
    }

    /// Wraps a backend's error.
    pub fn storage(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Storage(Box::new(e))
    }

    /// Into an `std::io::Error` (for `AsyncRead`/`AsyncWrite` implementations), keeping
    /// the kind recoverable through [`Error::kind`].
    pub fn into_io(self) -> std::io::Error {
        use std::io::ErrorKind as K;
        match self {
            Error::Io(e) => e,
            other => {
                let kind = match other.kind() {
                    ErrorKind::NotFound => K::NotFound,
                    ErrorKind::InvalidArgument => K::InvalidInput,
                    ErrorKind::ResourceExhausted => K::FileTooLarge,
                    ErrorKind::Corrupt => K::InvalidData,
                    ErrorKind::Internal | ErrorKind::Unavailable => K::Other,
                };
                std::io::Error::new(kind, other)
            }
        }
    }
}

/// A gRPC status code as the gRPC specification and other tools spell it
/// (`RESOURCE_EXHAUSTED`), which is what a user searches for.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "CANCELLED",
        C::Unknown => "UNKNOWN",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::DeadlineExceeded => "DEADLINE_EXCEEDED",
        C::NotFound => "NOT_FOUND",
        C::AlreadyExists => "ALREADY_EXISTS",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::FailedPrecondition => "FAILED_PRECONDITION",
        C::Aborted => "ABORTED",
        C::OutOfRange => "OUT_OF_RANGE",
        C::Unimplemented => "UNIMPLEMENTED",
        C::Internal => "INTERNAL",
        C::Unavailable => "UNAVAILABLE",
        C::DataLoss => "DATA_LOSS",
        C::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Whether a full disk (`ENOSPC`) is somewhere in `e`'s chain of causes.
pub fn storage_full(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::StorageFull)
        {
            return true;
        }
        cause = c.source();
    }
    false
}

impl From<tonic::Status> for Error {
    fn from(value: tonic::Status) -> Self {
        Error::Remote(value)
    }
}

impl From<Error> for tonic::Status {
    /// NOT_FOUND for absent things, INVALID_ARGUMENT (with the problem in the
    /// message) for the caller's mistakes, DATA_LOSS for corruption, UNAVAILABLE
    /// for an upstream failing, INTERNAL only for the server's own failures. A remote status passes through unchanged.
    fn from(value: Error) -> Self {
        if let Error::Remote(status) = value {
            return status;
        }
        if let Error::Io(e) = &value {
            // An io::Error may wrap one of ours (from a reader or writer).
            if let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<Error>()) {
                return status_for(inner.kind(), full_said(inner));
            }
        }
        status_for(value.kind(), full_said(&value))
    }
}

/// The error's message, saying first that the storage is full when a full disk
/// caused it (the message then goes on to name the file that did not fit).
fn full_said(e: &Error) -> String {
    if storage_full(e) {
        format!("the store's storage is full: {e}")
    } else {
        e.to_string()
    }
}

fn status_for(kind: ErrorKind, msg: String) -> tonic::Status {
    match kind {
        ErrorKind::NotFound => tonic::Status::not_found(msg),
        ErrorKind::InvalidArgument => tonic::Status::invalid_argument(msg),
        ErrorKind::Corrupt => tonic::Status::data_loss(msg),
        ErrorKind::ResourceExhausted => tonic::Status::resource_exhausted(msg),
        ErrorKind::Unavailable => {
            tracing::warn!(error = %msg, "unavailable");
            tonic::Status::unavailable(msg)
        }
        ErrorKind::Internal => {
            tracing::warn!(error = %msg, "internal error");
            tonic::Status::internal(msg)
        }
    }
}
