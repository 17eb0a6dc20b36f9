//! The HTTP face of a node: `/healthz`, `/metrics` and the bearer-token `/api/v1` resources.
//!
//! Handlers read the store (the source of truth) and the configuration; they never hold a lock
//! across an await. Errors leave as `{"error": {"kind": ..., "message": ...}}`.

mod alarms;
mod audit;
mod auth;
mod cameras;
mod error;
mod events;
mod headers;
mod live;
mod metrics;
mod params;
mod recordings;
mod sessions;
mod ui;
mod users;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{MatchedPath, State};
use axum::http::{Request, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower_http::trace::TraceLayer;
use xueliang_core::config::Config;
use xueliang_core::shutdown::Shutdown;
use xueliang_core::{Clock, Error, ErrorKind, ResultExt};
use xueliang_store::Store;

pub use alarms::{AlarmDesk, DeskAction};
pub use auth::{Principal, TokenSet};
pub use error::ApiError;
pub use headers::CONTENT_SECURITY_POLICY;
pub use live::LiveHub;
pub use metrics::HttpMetrics;
pub use sessions::{
    CSRF_HEADER, LoginLimiter, SESSION_COOKIE, hash_password, hash_password_blocking,
    verify_password,
};

/// What every handler can reach.
#[derive(Clone, Debug)]
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub tokens: Arc<TokenSet>,
    pub registry: prometheus::Registry,
    pub metrics: HttpMetrics,
    pub clock: Arc<dyn Clock>,
    /// Live camera health written by ingest.
    pub health: xueliang_core::health::HealthBoard,
    pub storage_dir: std::path::PathBuf,
    pub storage: xueliang_record::retention::StorageStatus,
    /// Live view: each camera's current GOP and new frames, fed by ingest.
    pub live: LiveHub,
    /// Where operator actions go; `None` on a node that runs no alarm engine.
    pub desk: Option<Arc<dyn AlarmDesk>>,
    /// Bumped by writers after they commit events; event streams wake on it.
    pub events: Arc<tokio::sync::watch::Sender<u64>>,
    /// Ends long-lived responses (event streams) when the service stops.
    pub shutdown: Shutdown,
    /// Failed logins per user and address.
    pub logins: Arc<LoginLimiter>,
    /// Browser sessions end after this long without a request.
    pub session_idle_ms: i64,
    /// Served over TLS: cookies get `Secure`, responses HSTS.
    pub secure_cookies: bool,
}

impl AppState {
    /// Builds the state, registering the HTTP metrics in `registry` (the one created in main).
    pub fn new(
        config: Arc<Config>,
        store: Arc<dyn Store>,
        registry: prometheus::Registry,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, Error> {
        let metrics = HttpMetrics::register(&registry)?;
        let tokens = Arc::new(TokenSet::from_config(&config.api.tokens));
        Ok(AppState {
            storage_dir: config.recordings_dir(),
            health: Default::default(),
            storage: Default::default(),
            live: Default::default(),
            desk: None,
            events: Arc::new(tokio::sync::watch::Sender::new(0)),
            shutdown: Shutdown::new(),
            logins: Arc::new(LoginLimiter::default()),
            session_idle_ms: i64::from(config.api.session_idle_minutes) * 60_000,
            secure_cookies: config.api.tls.is_some(),
            config,
            store,
            tokens,
            registry,
            metrics,
            clock,
        })
    }
}

/// The whole router.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/cameras", get(cameras::list))
        .route("/cameras/{id}", get(cameras::get_one))
        .route("/cameras/{id}/recordings", get(recordings::list))
        .route("/cameras/{id}/export.mp4", get(recordings::export))
        .route("/cameras/{id}/motion", get(recordings::motion))
        .route("/cameras/{id}/live", get(live::live))
        .route("/alarms", get(alarms::list))
        .route("/alarms/{id}", get(alarms::get_one))
        .route("/alarms/{id}/{action}", axum::routing::post(alarms::act))
        .route("/devices", get(alarms::devices))
        .route("/events", get(events::stream))
        .route("/audit", get(audit::list))
        .route("/users", get(users::list))
        .route("/me", get(sessions::me))
        .route("/logout", axum::routing::post(sessions::logout))
        .fallback(error::not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        // Outside the auth layer: this is how a session starts.
        .route("/login", axum::routing::post(sessions::login));

    let metrics_route = if state.config.api.metrics_auth {
        get(metrics_text).layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
    } else {
        get(metrics_text)
    };

    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", metrics_route)
        .nest("/api/v1", api)
        .merge(ui::router())
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), headers::secure))
        .layer(middleware::from_fn_with_state(state.clone(), metrics::track))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request<_>| {
                    let route = req
                        .extensions()
                        .get::<MatchedPath>()
                        .map(|m| m.as_str().to_owned())
                        .unwrap_or_else(|| "unmatched".into());
                    // The path only, never the query: it may carry times but must not carry tokens.
                    tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), route = %route)
                })
                .on_response(
                    |res: &Response, latency: Duration, _span: &tracing::Span| {
                        tracing::info!(status = res.status().as_u16(), latency_ms = latency.as_millis() as u64, "request");
                    },
                )
                .on_failure(()),
        )
        .with_state(state)
}

async fn healthz(State(st): State<AppState>) -> Response {
    let db = tokio::time::timeout(Duration::from_secs(2), st.store.ping()).await;
    let (status, db_state) = match db {
        Ok(Ok(())) => (StatusCode::OK, "ok"),
        Ok(Err(e)) => {
            tracing::warn!(err = %e.chain(), "health check: database unavailable");
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        }
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "timeout"),
    };
    let fault = st.storage.fault();
    let body = serde_json::json!({
        "status": if status == StatusCode::OK && fault.is_none() { "ok" } else { "degraded" },
        "node": st.config.node.id,
        "version": env!("CARGO_PKG_VERSION"),
        "database": { "backend": st.store.backend().as_str(), "state": db_state },
        "storage": { "fault": fault },
    });
    (status, axum::Json(body)).into_response()
}

async fn metrics_text(State(st): State<AppState>) -> Result<Response, ApiError> {
    use prometheus::Encoder;
    let enc = prometheus::TextEncoder::new();
    let mut buf = Vec::new();
    enc.encode(&st.registry.gather(), &mut buf)
        .err_kind(ErrorKind::Internal, || "encode metrics".into())?;
    Ok(([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], buf).into_response())
}

/// Binds `addr`, with a clear error when it is taken.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, Error> {
    tokio::net::TcpListener::bind(addr)
        .await
        .err_kind(ErrorKind::Unavailable, || {
            format!("cannot listen on {addr} (api.listen)")
        })
}

/// Serves until `shutdown` fires, then finishes requests in flight.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: Shutdown,
) -> Result<(), Error> {
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .err_kind(ErrorKind::Unavailable, || "HTTP server failed".into())
}

#[cfg(test)]
mod tests;
