//! Mapping sqlx errors to kinds a caller can act on.

use xueliang_core::{Error, ErrorKind};

/// Wraps a database error with what was being done.
pub(crate) fn db(what: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
    move |e| {
        let kind = match &e {
            sqlx::Error::RowNotFound => ErrorKind::NotFound,
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                ErrorKind::Unavailable
            }
            sqlx::Error::Tls(_) => ErrorKind::Unavailable,
            sqlx::Error::Database(d) if d.is_unique_violation() => ErrorKind::AlreadyExists,
            sqlx::Error::Database(d) if d.is_foreign_key_violation() => {
                ErrorKind::FailedPrecondition
            }
            sqlx::Error::Database(d) if d.is_check_violation() => ErrorKind::InvalidArgument,
            sqlx::Error::Database(d) if d.message().contains("append-only") => {
                ErrorKind::PermissionDenied
            }
            sqlx::Error::Database(d) if d.message().contains("database is locked") => {
                ErrorKind::Unavailable
            }
            sqlx::Error::Decode(_) | sqlx::Error::ColumnDecode { .. } => ErrorKind::DataLoss,
            _ => ErrorKind::Internal,
        };
        Error::with_source(kind, what, e)
    }
}
