use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;
use xueliang_core::config::{NoEnv, load_str};
use xueliang_core::model::CameraState;
use xueliang_core::{SystemClock, Timestamp};
use xueliang_store::testing::TestDb;
use xueliang_store::{CameraStateChange, CameraUpsert};

use super::*;

const OPS: &str = "ops-token-0123456789abcdef";
const DESK: &str = "desk-token-0123456789abcdef";

async fn app(metrics_auth: bool) -> (Router, TestDb, AppState) {
    let text = format!(
        r#"[node]
id = "edge-01"
[api]
metrics_auth = {metrics_auth}
[[api.tokens]]
name = "ops"
token = "{OPS}"
role = "operator"
[[api.tokens]]
name = "desk"
token = "{DESK}"
role = "duty"
cameras = ["gate"]
[[cameras]]
id = "gate"
name = "校门"
url = "rtsp://192.0.2.10/stream1"
[[cameras]]
id = "yard"
url = "rtsp://192.0.2.11/stream1"
"#
    );
    let cfg = Arc::new(load_str(&text, "t.toml", Path::new("."), &NoEnv).unwrap());
    let db = TestDb::sqlite();
    let store = db.open("edge-01").await.unwrap();
    store
        .sync_cameras(
            &cfg.cameras
                .iter()
                .map(|c| CameraUpsert {
                    id: c.id.clone(),
                    name: c.name.clone(),
                })
                .collect::<Vec<_>>(),
            Timestamp::from_millis(0),
        )
        .await
        .unwrap();
    store
        .set_camera_state(&CameraStateChange {
            camera_id: "yard".into(),
            state: CameraState::Offline,
            last_error: Some("connection refused".into()),
            at: Timestamp::from_millis(5000),
        })
        .await
        .unwrap();
    let state = AppState::new(
        cfg,
        store,
        prometheus::Registry::new(),
        Arc::new(SystemClock),
    )
    .unwrap();
    (router(state.clone()), db, state)
}

async fn call(
    app: &Router,
    uri: &str,
    token: Option<&str>,
) -> (StatusCode, serde_json::Value, String) {
    let mut req = Request::get(uri);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let res = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let ctype = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    let text = if json.is_null() {
        String::from_utf8_lossy(&bytes).into_owned()
    } else {
        ctype
    };
    (status, json, text)
}

#[tokio::test]
async fn healthz_needs_no_token_and_reports_the_database() {
    let (app, _db, _) = app(false).await;
    let (status, body, _) = call(&app, "/healthz", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");
    assert_eq!(body["node"], "edge-01");
    assert_eq!(body["database"]["backend"], "sqlite");
}

#[tokio::test]
async fn healthz_degrades_when_the_database_is_gone() {
    let (app, _db, state) = app(false).await;
    state.store.close().await;
    let (status, body, _) = call(&app, "/healthz", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["database"]["state"], "unavailable");
}

#[tokio::test]
async fn api_requires_a_valid_bearer_token() {
    let (app, _db, _) = app(false).await;
    for (token, why) in [
        (None, "missing Authorization"),
        (Some("wrong-token-0123456789"), "unknown or revoked"),
    ] {
        let (status, body, _) = call(&app, "/api/v1/cameras", token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["error"]["kind"], "unauthenticated");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(why),
            "{body}"
        );
    }
    let req = Request::get("/api/v1/cameras").header("authorization", format!("Basic {OPS}"));
    let res = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        res.headers()["www-authenticate"],
        "Bearer realm=\"xueliang\""
    );
}

#[tokio::test]
async fn cameras_merge_config_and_stored_state_within_scope() {
    let (app, _db, _) = app(false).await;
    let (status, body, _) = call(&app, "/api/v1/cameras", Some(OPS)).await;
    assert_eq!(status, StatusCode::OK);
    let cams = body.as_array().unwrap();
    assert_eq!(cams.len(), 2);
    assert_eq!(cams[0]["id"], "gate");
    assert_eq!(cams[0]["name"], "校门");
    assert_eq!(cams[0]["state"], "connecting");
    assert_eq!(cams[1]["state"], "offline");
    assert_eq!(cams[1]["last_error"], "connection refused");
    assert_eq!(cams[1]["state_since"], "1970-01-01T00:00:05.000Z");

    // The duty desk sees only its camera, and is refused the other one by name.
    let (_, body, _) = call(&app, "/api/v1/cameras", Some(DESK)).await;
    assert_eq!(body.as_array().unwrap().len(), 1);
    let (status, body, _) = call(&app, "/api/v1/cameras/yard", Some(DESK)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"]["kind"], "permission_denied");
    let (status, body, _) = call(&app, "/api/v1/cameras/gate", Some(DESK)).await;
    assert_eq!(
        (status, body["id"].as_str()),
        (StatusCode::OK, Some("gate"))
    );
    let (status, body, _) = call(&app, "/api/v1/cameras/nope", Some(OPS)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["message"], "no camera \"nope\"");
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let (app, _db, _) = app(false).await;
    let (status, body, _) = call(&app, "/api/v1/nothing", Some(OPS)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["kind"], "not_found");
    // Unknown API paths still need a token first: their existence is not disclosed.
    let (status, _, _) = call(&app, "/api/v1/nothing", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let req = Request::post("/healthz").body(Body::empty()).unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn metrics_count_requests_by_route_pattern() {
    let (app, _db, _) = app(false).await;
    call(&app, "/api/v1/cameras/gate", Some(OPS)).await;
    call(&app, "/api/v1/cameras/yard", Some(OPS)).await;
    call(&app, "/api/v1/cameras", None).await;
    let (status, _, text) = call(&app, "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        text.contains(r#"xueliang_http_requests_total{method="GET",route="/api/v1/cameras/{id}",status="200"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"route="/api/v1/cameras",status="401"} 1"#),
        "{text}"
    );
    assert!(!text.contains("yard"), "raw paths must not become labels");
}

#[tokio::test]
async fn metrics_can_require_a_token() {
    let (app, _db, _) = app(true).await;
    assert_eq!(
        call(&app, "/metrics", None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(call(&app, "/metrics", Some(OPS)).await.0, StatusCode::OK);
}

#[tokio::test]
async fn recordings_and_export_explain_bad_queries() {
    let (app, _db, _) = app(false).await;
    let (status, body, _) = call(
        &app,
        "/api/v1/cameras/gate/recordings?from=yesterday",
        Some(OPS),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.starts_with("query parameter `from`: \"yesterday\" is not an RFC 3339 time"),
        "{msg}"
    );
    let (status, body, _) = call(
        &app,
        "/api/v1/cameras/gate/recordings?from=2026-11-24T10:00:00Z&to=2026-11-24T09:00:00Z",
        Some(OPS),
    )
    .await;
    assert_eq!(
        (status, body["error"]["message"].as_str()),
        (StatusCode::BAD_REQUEST, Some("`to` must be after `from`"))
    );
    let (status, body, _) = call(
        &app,
        "/api/v1/cameras/gate/recordings?detail=all",
        Some(OPS),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`detail`")
    );
    // An empty index answers with empty lists, not an error.
    let (status, body, _) = call(&app, "/api/v1/cameras/gate/recordings", Some(OPS)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["runs"], serde_json::json!([]));
    assert_eq!(body["detail"], "segments");

    let (status, body, _) = call(
        &app,
        "/api/v1/cameras/gate/export.mp4?from=2026-11-24T10:00:00Z",
        Some(OPS),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["message"], "query parameter `to` is required");
    let (status, body, _) = call(
        &app,
        "/api/v1/cameras/gate/export.mp4?from=2026-11-24T10:00:00Z&to=2026-11-26T10:00:00Z",
        Some(OPS),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 24 hours")
    );
    let (status, body, _) = call(
        &app,
        "/api/v1/cameras/gate/export.mp4?from=2026-11-24T10:00:00Z&to=2026-11-24T10:05:00Z",
        Some(OPS),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("no recording between")
    );
    // Scopes hold for recordings as for everything else.
    let (status, _, _) = call(&app, "/api/v1/cameras/yard/recordings", Some(DESK)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}
