//! HTTP metrics, registered in the registry main created. Labels come from bounded sets:
//! the matched route pattern (not the raw path), the method and the status code.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use xueliang_core::{Error, ErrorKind, ResultExt};

use crate::AppState;

#[derive(Clone, Debug)]
pub struct HttpMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
}

impl HttpMetrics {
    pub fn register(registry: &Registry) -> Result<Self, Error> {
        let requests = IntCounterVec::new(
            Opts::new(
                "xueliang_http_requests_total",
                "HTTP requests answered, by route, method and status",
            ),
            &["route", "method", "status"],
        )
        .err_kind(ErrorKind::Internal, || "define http metrics".into())?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "xueliang_http_request_duration_seconds",
                "Time to answer an HTTP request",
            )
            .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
            &["route"],
        )
        .err_kind(ErrorKind::Internal, || "define http metrics".into())?;
        registry
            .register(Box::new(requests.clone()))
            .err_kind(ErrorKind::Internal, || "register http metrics".into())?;
        registry
            .register(Box::new(duration.clone()))
            .err_kind(ErrorKind::Internal, || "register http metrics".into())?;
        Ok(HttpMetrics { requests, duration })
    }
}

fn bounded_method(m: &axum::http::Method) -> &'static str {
    match m.as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}

pub(crate) async fn track(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method = bounded_method(req.method());
    let start = Instant::now();
    let res = next.run(req).await;
    st.metrics
        .requests
        .with_label_values(&[route.as_str(), method, res.status().as_str()])
        .inc();
    st.metrics
        .duration
        .with_label_values(&[route.as_str()])
        .observe(start.elapsed().as_secs_f64());
    res
}
