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

async fn add_user(
    state: &AppState,
    name: &str,
    role: xueliang_core::config::Role,
    cameras: &[&str],
) {
    let now = Timestamp::from_millis(1_000);
    state
        .store
        .create_user(&xueliang_store::UserRecord {
            id: xueliang_core::EntityId::new_at(now),
            username: name.into(),
            password_hash: hash_password_blocking(format!("{name}-password-123"))
                .await
                .unwrap(),
            role,
            cameras: cameras.iter().map(|c| c.to_string()).collect(),
            devices: vec!["*".into()],
            disabled: false,
            created_at: now,
            updated_at: now,
        })
        .await
        .unwrap();
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

async fn send(
    app: &Router,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = app
        .clone()
        .oneshot(req.body(Body::from(body.to_owned())).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes().to_vec();
    Reply {
        status,
        headers,
        body,
    }
}

/// Logs in; returns (cookie header value, csrf token).
async fn login(app: &Router, name: &str) -> (String, String) {
    let r = send(
        app,
        "POST",
        "/api/v1/login",
        &[("content-type", "application/json")],
        &format!(r#"{{"username":"{name}","password":"{name}-password-123"}}"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json());
    let set = r.headers["set-cookie"].to_str().unwrap().to_owned();
    (
        set.split(';').next().unwrap().to_owned(),
        r.json()["csrf"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn login_me_and_logout_with_csrf() {
    use xueliang_core::config::Role;
    let (app, _db, state) = app(false).await;
    add_user(&state, "wang", Role::Duty, &["gate"]).await;
    let r = send(
        &app,
        "POST",
        "/api/v1/login",
        &[],
        r#"{"username":"wang","password":"wang-password-123"}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let set = r.headers["set-cookie"].to_str().unwrap();
    assert!(set.starts_with("xl_session="), "{set}");
    assert!(
        set.ends_with("; HttpOnly; SameSite=Strict; Path=/"),
        "{set}"
    );
    let cookie_value = set
        .split(';')
        .next()
        .unwrap()
        .trim_start_matches("xl_session=");
    assert_eq!(
        cookie_value.len(),
        43,
        "32 bytes, base64url without padding"
    );
    let body = r.json();
    assert_eq!(body["username"], "wang");
    assert_eq!(body["role"], "duty");
    assert_eq!(body["cameras"], serde_json::json!(["gate"]));
    assert_eq!(body["devices"], serde_json::json!(["*"]));
    let csrf = body["csrf"].as_str().unwrap().to_owned();
    let cookie = format!("xl_session={cookie_value}");

    let me = send(&app, "GET", "/api/v1/me", &[("cookie", &cookie)], "").await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.json()["csrf"], csrf.as_str());
    assert_eq!(me.json()["role"], "duty");
    // The session carries the user's scope like a token does.
    let cams = send(&app, "GET", "/api/v1/cameras", &[("cookie", &cookie)], "").await;
    assert_eq!(cams.json().as_array().unwrap().len(), 1);

    // Cookie-authenticated state changes need the CSRF header.
    for headers in [
        vec![("cookie", cookie.as_str())],
        vec![("cookie", cookie.as_str()), ("x-csrf-token", "forged")],
    ] {
        let r = send(&app, "POST", "/api/v1/logout", &headers, "").await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert!(
            r.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains("X-CSRF-Token")
        );
    }
    let out = send(
        &app,
        "POST",
        "/api/v1/logout",
        &[("cookie", &cookie), ("x-csrf-token", &csrf)],
        "",
    )
    .await;
    assert_eq!(out.status, StatusCode::NO_CONTENT);
    assert!(
        out.headers["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let me = send(&app, "GET", "/api/v1/me", &[("cookie", &cookie)], "").await;
    assert_eq!(me.status, StatusCode::UNAUTHORIZED);

    // Tokens keep working, without CSRF, and /me describes them.
    let me = send(
        &app,
        "GET",
        "/api/v1/me",
        &[("authorization", &format!("Bearer {OPS}"))],
        "",
    )
    .await;
    assert_eq!(me.json()["username"], "ops");
    assert_eq!(me.json()["role"], "operator");
    assert!(me.json().get("csrf").is_none());
}

#[tokio::test]
async fn bad_logins_look_alike_and_are_rate_limited() {
    use xueliang_core::config::Role;
    let (app, _db, state) = app(false).await;
    add_user(&state, "li", Role::Viewer, &["*"]).await;
    let try_login = |name: &'static str, pw: &'static str| {
        let app = app.clone();
        async move {
            send(
                &app,
                "POST",
                "/api/v1/login",
                &[],
                &format!(r#"{{"username":"{name}","password":"{pw}"}}"#),
            )
            .await
        }
    };
    let unknown = try_login("nobody", "whatever-123").await;
    let wrong = try_login("li", "whatever-123").await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(unknown.json(), wrong.json());
    for _ in 0..4 {
        assert_eq!(
            try_login("li", "whatever-123").await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    // Five failures: even the right password is refused now.
    let limited = try_login("li", "li-password-123").await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    let secs: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=900).contains(&secs), "{secs}");
    let bad = send(&app, "POST", "/api/v1/login", &[], "not json").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    // Disabled users are refused like a wrong password.
    state
        .store
        .set_user_disabled("li", true, Timestamp::from_millis(2_000))
        .await
        .unwrap();
    state.logins.succeeded("li");
    assert_eq!(
        try_login("li", "li-password-123").await.status,
        StatusCode::UNAUTHORIZED
    );

    let audit = state
        .store
        .list_audit(Timestamp::from_millis(0), 100)
        .await
        .unwrap();
    let failed = audit.iter().filter(|e| e.action == "login.failed").count();
    assert_eq!(failed, 7, "{audit:?}");
}

#[tokio::test]
async fn roles_and_scopes_are_enforced() {
    use xueliang_core::config::Role;
    let (app, _db, state) = app(false).await;
    add_user(&state, "viewer", Role::Viewer, &["*"]).await;
    add_user(&state, "desk", Role::Duty, &["gate"]).await;
    add_user(&state, "boss", Role::Admin, &["*"]).await;
    let alarm = format!(
        "/api/v1/alarms/{}/ack",
        xueliang_core::EntityId::new_at(Timestamp::from_millis(5_000))
    );
    let export =
        "/api/v1/cameras/gate/export.mp4?from=2026-11-24T10:00:00Z&to=2026-11-24T10:05:00Z";

    let (vc, vx) = login(&app, "viewer").await;
    let r = send(
        &app,
        "POST",
        &alarm,
        &[("cookie", &vc), ("x-csrf-token", &vx)],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(
        send(&app, "GET", export, &[("cookie", &vc)], "")
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        send(&app, "GET", "/api/v1/cameras", &[("cookie", &vc)], "")
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        send(&app, "GET", "/api/v1/audit", &[("cookie", &vc)], "")
            .await
            .status,
        StatusCode::FORBIDDEN
    );

    let (dc, dx) = login(&app, "desk").await;
    let r = send(&app, "GET", export, &[("cookie", &dc)], "").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("export")
    );
    // Duty may act on alarms: past the role check, the unknown alarm is a 404.
    let r = send(
        &app,
        "POST",
        &alarm,
        &[("cookie", &dc), ("x-csrf-token", &dx)],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(
        send(&app, "GET", "/api/v1/cameras/yard", &[("cookie", &dc)], "")
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        send(
            &app,
            "GET",
            "/api/v1/cameras/yard/recordings",
            &[("cookie", &dc)],
            ""
        )
        .await
        .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        send(&app, "GET", "/api/v1/users", &[("cookie", &dc)], "")
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    // The duty token from the configuration is held to the same rules.
    let desk_token = format!("Bearer {DESK}");
    assert_eq!(
        send(&app, "GET", export, &[("authorization", &desk_token)], "")
            .await
            .status,
        StatusCode::FORBIDDEN
    );

    // An operator passes the role check (and finds no footage); an admin reads users.
    let ops = format!("Bearer {OPS}");
    assert_eq!(
        send(&app, "GET", export, &[("authorization", &ops)], "")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let (bc, _) = login(&app, "boss").await;
    let users = send(&app, "GET", "/api/v1/users", &[("cookie", &bc)], "").await;
    assert_eq!(users.status, StatusCode::OK);
    let list = users.json();
    assert_eq!(list.as_array().unwrap().len(), 3);
    assert!(list[0].get("password_hash").is_none());
    // Every refusal left a row naming who tried to reach what.
    let trail = state
        .store
        .list_audit(Timestamp::from_millis(0), 1000)
        .await
        .unwrap();
    let denied: Vec<(String, Option<String>)> = trail
        .iter()
        .filter(|e| e.action == "access.denied")
        .map(|e| (e.actor.clone(), e.target.clone()))
        .collect();
    assert!(
        denied.contains(&("user:desk".into(), Some("/api/v1/cameras/yard".into()))),
        "{denied:?}"
    );
    assert!(
        denied.contains(&("user:viewer".into(), Some("/api/v1/audit".into()))),
        "{denied:?}"
    );
    assert!(denied.len() >= 8, "{denied:?}");
}

#[tokio::test]
async fn audit_reads_as_json_and_csv_for_admins() {
    use xueliang_core::config::Role;
    let (app, _db, state) = app(false).await;
    add_user(&state, "boss", Role::Admin, &["*"]).await;
    let (bc, _) = login(&app, "boss").await;
    let _ = send(
        &app,
        "POST",
        "/api/v1/login",
        &[],
        r#"{"username":"=HYPERLINK(\"x\"),evil","password":"nope-nope-nope"}"#,
    )
    .await;
    let since = "since=1970-01-01T00:00:00Z";
    let json = send(
        &app,
        "GET",
        &format!("/api/v1/audit?{since}"),
        &[("cookie", &bc)],
        "",
    )
    .await;
    assert_eq!(json.status, StatusCode::OK);
    let rows = json.json();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["action"], "login");
    assert_eq!(rows[0]["actor"], "user:boss");
    assert_eq!(rows[0]["detail"]["role"], "admin");
    assert_eq!(rows[1]["action"], "login.failed");

    let csv = send(
        &app,
        "GET",
        &format!("/api/v1/audit?{since}&format=csv"),
        &[("cookie", &bc)],
        "",
    )
    .await;
    assert_eq!(csv.status, StatusCode::OK);
    assert_eq!(csv.headers["content-type"], "text/csv; charset=utf-8");
    let text = String::from_utf8(csv.body).unwrap();
    let mut lines = text.split("\r\n");
    assert_eq!(
        lines.next().unwrap(),
        "id,at,node_id,actor,actor_kind,action,target,remote_addr,detail"
    );
    let first = lines.next().unwrap();
    assert!(
        first.contains(",edge-01,user:boss,user,login,,,"),
        "{first}"
    );
    assert!(first.ends_with(r#""{""role"":""admin""}""#), "{first}");
    let second = lines.next().unwrap();
    assert!(
        second.contains(r#","user:=HYPERLINK(""x""),evil","#),
        "quoted, and not a formula since it starts with user: {second}"
    );
    let bad = send(
        &app,
        "GET",
        "/api/v1/audit?format=xml",
        &[("cookie", &bc)],
        "",
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        send(
            &app,
            "GET",
            "/api/v1/audit",
            &[("authorization", &format!("Bearer {OPS}"))],
            ""
        )
        .await
        .status,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn security_headers_on_every_response() {
    let (app, _db, _) = app(false).await;
    for (uri, api) in [
        ("/healthz", false),
        ("/api/v1/cameras", true),
        ("/api/v1/nothing", true),
    ] {
        let r = send(&app, "GET", uri, &[], "").await;
        assert_eq!(r.headers["x-content-type-options"], "nosniff", "{uri}");
        assert_eq!(r.headers["x-frame-options"], "DENY");
        assert_eq!(r.headers["referrer-policy"], "no-referrer");
        let csp = r.headers["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("default-src 'self'") && csp.contains("media-src 'self' blob:"),
            "{csp}"
        );
        assert_eq!(
            r.headers
                .get("cache-control")
                .is_some_and(|v| v == "no-store"),
            api,
            "{uri}"
        );
        assert!(r.headers.get("strict-transport-security").is_none());
    }
}
