//! JSON errors: every failure leaves as `{"error": {"kind": ..., "message": ...}}`.

use axum::Json;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use xueliang_core::{Error, ErrorKind};

/// An error on its way to the client.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

impl ApiError {
    pub fn new(kind: ErrorKind, msg: impl Into<String>) -> Self {
        ApiError(Error::new(kind, msg))
    }
}

pub(crate) fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::InvalidArgument => StatusCode::BAD_REQUEST,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::AlreadyExists | ErrorKind::FailedPrecondition => StatusCode::CONFLICT,
        ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
        ErrorKind::Unavailable | ErrorKind::Cancelled => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::ResourceExhausted => StatusCode::INSUFFICIENT_STORAGE,
        ErrorKind::DataLoss | ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

pub(crate) fn body(kind: ErrorKind, message: &str) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "error": { "kind": kind.as_str(), "message": message } }))
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = self.0.kind();
        let status = status_of(kind);
        if status.is_server_error() {
            // The cause chain may name files and SQL; it goes to the log, not to the client.
            tracing::error!(err = %self.0.chain(), "request failed");
        }
        let mut res = (status, body(kind, self.0.message())).into_response();
        if kind == ErrorKind::Unauthenticated {
            res.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"xueliang\""),
            );
        }
        res
    }
}

pub(crate) async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        ErrorKind::NotFound,
        format!("no such resource: {method} {}", uri.path()),
    )
}

pub(crate) async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        body(
            ErrorKind::InvalidArgument,
            &format!("{method} is not allowed on {}", uri.path()),
        ),
    )
        .into_response()
}
