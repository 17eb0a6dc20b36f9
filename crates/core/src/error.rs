//! One error type for the whole service: a kind (what a caller may do about it), a message and
//! the chain of causes.

use std::error::Error as StdError;
use std::fmt;

/// What went wrong, coarse enough to map onto HTTP statuses, exit codes and retry decisions.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The caller sent something malformed or out of range.
    InvalidArgument,
    /// The thing asked for does not exist.
    NotFound,
    /// The thing to create exists already.
    AlreadyExists,
    /// No or wrong credentials.
    Unauthenticated,
    /// Credentials are fine but do not allow this.
    PermissionDenied,
    /// The state does not allow the operation (e.g. resolving a resolved incident, a stale version).
    FailedPrecondition,
    /// A peer or resource is temporarily unreachable; retrying may help.
    Unavailable,
    /// Disk, memory or a queue is full.
    ResourceExhausted,
    /// Stored data is damaged or lost.
    DataLoss,
    /// The operation was stopped by shutdown.
    Cancelled,
    /// A bug or an unexpected state.
    Internal,
}

impl ErrorKind {
    /// Stable snake_case name used in JSON errors and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::NotFound => "not_found",
            ErrorKind::AlreadyExists => "already_exists",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::FailedPrecondition => "failed_precondition",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::ResourceExhausted => "resource_exhausted",
            ErrorKind::DataLoss => "data_loss",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error with a kind, a message and an optional source.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    msg: String,
    source: Option<Box<dyn StdError + Send + Sync + 'static>>,
}

impl Error {
    pub fn new(kind: ErrorKind, msg: impl Into<String>) -> Self {
        Error {
            kind,
            msg: msg.into(),
            source: None,
        }
    }

    pub fn with_source(
        kind: ErrorKind,
        msg: impl Into<String>,
        source: impl StdError + Send + Sync + 'static,
    ) -> Self {
        Error {
            kind,
            msg: msg.into(),
            source: Some(Box::new(source)),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.msg
    }

    /// The message followed by every cause, for the one log line at the top.
    pub fn chain(&self) -> Chain<'_> {
        Chain(self)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.msg)
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

/// Displays an error and its causes as `msg: cause: cause`.
#[derive(Debug)]
pub struct Chain<'a>(&'a Error);

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cur = self.0.source();
        while let Some(e) = cur {
            write!(f, ": {e}")?;
            cur = e.source();
        }
        Ok(())
    }
}

/// Tags a foreign error with a kind and a message.
pub trait ResultExt<T> {
    fn err_kind(self, kind: ErrorKind, msg: impl FnOnce() -> String) -> Result<T, Error>;
}

impl<T, E: StdError + Send + Sync + 'static> ResultExt<T> for Result<T, E> {
    fn err_kind(self, kind: ErrorKind, msg: impl FnOnce() -> String) -> Result<T, Error> {
        self.map_err(|e| Error::with_source(kind, msg(), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_lists_every_cause() {
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied by disk");
        let inner = Error::with_source(ErrorKind::Unavailable, "open segment", io);
        let outer = Error::with_source(ErrorKind::Internal, "start recorder", inner);
        assert_eq!(
            outer.chain().to_string(),
            "internal: start recorder: unavailable: open segment: denied by disk"
        );
        assert_eq!(outer.kind(), ErrorKind::Internal);
    }
}
