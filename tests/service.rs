//! `xueliang run` as an operator starts it: the shipped examples, on SQLite and PostgreSQL,
//! served over HTTP, stopped by signals.

use std::time::Duration;

use xueliang_tests::*;

const EDGE_TOKEN: &str = "change-me-edge-centre-token-0001";

fn check_serving(svc: &Service, token: &str, node: &str, backend: &str) {
    let addr = svc.addr();
    let h = get(addr, "/healthz", None);
    assert_eq!(h.status, 200, "{}", h.body);
    assert_eq!(h.json()["node"], node);
    assert_eq!(h.json()["database"]["backend"], backend);

    let m = get(addr, "/metrics", None);
    assert_eq!(m.status, 200);
    assert!(m.header("content-type").unwrap().starts_with("text/plain"));
    assert!(
        m.body.contains("xueliang_build_info{version="),
        "{}",
        m.body
    );

    let denied = get(addr, "/api/v1/cameras", None);
    assert_eq!(denied.status, 401);
    assert_eq!(denied.json()["error"]["kind"], "unauthenticated");
    let wrong = get(addr, "/api/v1/cameras", Some("not-the-token-at-all"));
    assert_eq!(wrong.status, 401);

    let ok = get(addr, "/api/v1/cameras", Some(token));
    assert_eq!(ok.status, 200, "{}", ok.body);
    let cams = ok.json();
    assert!(!cams.as_array().unwrap().is_empty());
    // The examples ship their cameras disabled (their addresses are placeholders).
    assert_eq!(cams[0]["state"], "offline");
    assert_eq!(cams[0]["enabled"], false);
    assert_eq!(cams[0]["last_error"], "disabled in the configuration");

    // The request was counted under its route pattern.
    let m = get(addr, "/metrics", None);
    assert!(
        m.body.contains(
            r#"xueliang_http_requests_total{method="GET",route="/api/v1/cameras",status="200"} 1"#
        ),
        "{}",
        m.body
    );
}

#[test]
fn edge_example_serves_on_sqlite_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_file(
        dir.path(),
        "edge.toml",
        &example_config("edge.toml", dir.path()),
    );
    let mut svc = Service::start(&cfg, &[]);
    check_serving(&svc, EDGE_TOKEN, "zigong-yantan-01", "sqlite");
    assert!(dir.path().join("xueliang.db").exists());
    assert!(dir.path().join("recordings").is_dir());
    // Example tokens are called out at start.
    assert!(
        svc.log
            .iter()
            .any(|l| l.contains("still the example value")),
        "{:#?}",
        svc.log
    );

    svc.signal("TERM");
    let st = svc.wait(Duration::from_secs(20));
    assert!(st.success(), "exit {st}; log:\n{}", svc.log.join("\n"));
    assert!(
        svc.log
            .iter()
            .any(|l| l.contains("shutting down gracefully"))
    );
    assert!(svc.log.iter().any(|l| l.contains(r#""message":"stopped""#)));
    // No secret ever reaches the log.
    assert!(!svc.log.iter().any(|l| l.contains(EDGE_TOKEN)));
}

#[test]
fn centre_example_serves_on_postgresql_and_stops_on_sigint() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt
        .block_on(xueliang_store::testing::TestDb::postgres())
        .expect("test database");
    let dir = tempfile::tempdir().unwrap();
    let text = example_config("centre.toml", dir.path()).replace(
        "url = \"postgres://xueliang@127.0.0.1:5432/xueliang\"",
        &format!("url = {:?}", db.config_url()),
    );
    let cfg = write_file(dir.path(), "centre.toml", &text);
    let mut svc = Service::start(&cfg, &[]);
    check_serving(
        &svc,
        "change-me-centre-wall-token-0001",
        "yantan-centre-01",
        "postgres",
    );

    // The duty desk token is scoped to its camera.
    let desk = "change-me-centre-desk-token-0001";
    assert_eq!(
        get(svc.addr(), "/api/v1/cameras/township-square", Some(desk)).status,
        200
    );

    svc.signal("INT");
    let st = svc.wait(Duration::from_secs(20));
    assert!(st.success(), "exit {st}; log:\n{}", svc.log.join("\n"));
    // The example's persistent broker session would otherwise collect every later message.
    xueliang_tests::broker::forget_session(1883, "xueliang-yantan-centre-01");
    drop(db);
}

#[test]
fn restart_keeps_the_database_and_records_each_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_file(
        dir.path(),
        "edge.toml",
        &example_config("edge.toml", dir.path()),
    );
    for _ in 0..2 {
        let mut svc = Service::start(&cfg, &[]);
        svc.signal("TERM");
        assert!(svc.wait(Duration::from_secs(20)).success());
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let starts = rt.block_on(async {
        let opts = xueliang_store::OpenOptions::sqlite(&dir.path().join("xueliang.db"));
        let store = xueliang_store::open(&opts, "zigong-yantan-01".parse().unwrap())
            .await
            .unwrap();
        let audit = store.list_audit(xueliang_core_ts(0), 100).await.unwrap();
        store.close().await;
        audit
            .into_iter()
            .filter(|a| a.action == "service.start")
            .count()
    });
    assert_eq!(starts, 2);
}

fn xueliang_core_ts(ms: i64) -> xueliang_core::Timestamp {
    xueliang_core::Timestamp::from_millis(ms)
}

#[test]
fn a_taken_port_is_a_clear_error() {
    let blocker = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = blocker.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let text = example_config("edge.toml", dir.path()).replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
    );
    let cfg = write_file(dir.path(), "edge.toml", &text);
    let (st, _, err) = run_cli(&["run", "--config", cfg.to_str().unwrap()], &[]);
    assert_eq!(st.code(), Some(1));
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port} (api.listen)")),
        "{err}"
    );
}

#[test]
fn an_unreachable_database_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let text = example_config("centre.toml", dir.path()).replace(
        "url = \"postgres://xueliang@127.0.0.1:5432/xueliang\"",
        "url = \"postgres://xueliang@127.0.0.1:1/xueliang\"",
    );
    let cfg = write_file(dir.path(), "centre.toml", &text);
    let (st, _, err) = run_cli(&["run", "--config", cfg.to_str().unwrap()], &[]);
    assert_eq!(st.code(), Some(1));
    assert!(
        err.contains("cannot connect to PostgreSQL at postgres://xueliang@127.0.0.1:1/xueliang"),
        "{err}"
    );
}
