//! Console users end to end: `xueliang user add` with the password in the environment, then a
//! login over HTTP, `/api/v1/me` with the session cookie, a CSRF-checked logout, and the audit
//! log as an admin token reads it.

use std::time::Duration;

use xueliang_tests::*;

const ADMIN_TOKEN: &str = "users-test-admin-token-0123456789";

fn config(dir: &std::path::Path) -> std::path::PathBuf {
    // The embedded broker needs a concrete port.
    let mqtt = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let text = format!(
        r#"[node]
id = "users-e2e"
data_dir = {data:?}
[mqtt]
listen = "{mqtt}"
[api]
listen = "127.0.0.1:0"
[[api.tokens]]
name = "admin"
token = "{ADMIN_TOKEN}"
role = "admin"
[[cameras]]
id = "gate"
url = "rtsp://192.0.2.10/stream1"
enabled = false
"#,
        data = dir.display().to_string()
    );
    write_file(dir, "users.toml", &text)
}

#[test]
fn user_added_on_the_cli_logs_in_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let cfg_s = cfg.to_str().unwrap();
    let (st, _, err) = run_cli(
        &[
            "user",
            "add",
            "--config",
            cfg_s,
            "--username",
            "wang",
            "--role",
            "duty",
            "--cameras",
            "gate",
        ],
        &[("XUELIANG_USER_PASSWORD", "correct horse battery")],
    );
    assert!(st.success(), "{err}");
    assert!(
        !err.contains("correct horse"),
        "the password must not be echoed: {err}"
    );
    let (st, _, err) = run_cli(
        &[
            "user",
            "add",
            "--config",
            cfg_s,
            "--username",
            "wang",
            "--role",
            "viewer",
        ],
        &[("XUELIANG_USER_PASSWORD", "another password")],
    );
    assert!(!st.success());
    assert!(err.contains("already exists"), "{err}");
    let (st, out, err) = run_cli(&["user", "list", "--config", cfg_s], &[]);
    assert!(st.success(), "{err}");
    assert!(out.contains("wang") && out.contains("duty"), "{out}");

    let mut svc = Service::start(&cfg, &[]);
    let addr = svc.addr();

    let bad = post_json(
        addr,
        "/api/v1/login",
        None,
        r#"{"username":"wang","password":"wrong password"}"#,
    );
    assert_eq!(bad.status, 401, "{}", bad.body);

    let ok = post_json(
        addr,
        "/api/v1/login",
        None,
        r#"{"username":"wang","password":"correct horse battery"}"#,
    );
    assert_eq!(ok.status, 200, "{}", ok.body);
    let me = ok.json();
    assert_eq!(me["username"], "wang");
    assert_eq!(me["role"], "duty");
    assert_eq!(me["cameras"], serde_json::json!(["gate"]));
    let csrf = me["csrf"].as_str().unwrap().to_owned();
    let set = ok.header("set-cookie").unwrap().to_owned();
    assert!(set.starts_with("xl_session="), "{set}");
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    assert!(!set.contains("Secure"), "plain HTTP: {set}");
    let cookie = set.split(';').next().unwrap().to_owned();
    assert_eq!(ok.header("x-frame-options"), Some("DENY"));
    assert_eq!(ok.header("cache-control"), Some("no-store"));

    let me2 = get_raw(addr, "/api/v1/me", None, &[("Cookie", &cookie)]);
    assert_eq!(me2.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&me2.body).unwrap();
    assert_eq!(v["username"], "wang");
    assert_eq!(v["csrf"], csrf.as_str());

    // A state change without the CSRF header is refused; with it, logout works.
    let no_csrf = request_raw(
        addr,
        "POST",
        "/api/v1/logout",
        None,
        &[("Cookie", &cookie)],
        Some(""),
    );
    assert_eq!(no_csrf.status, 403);
    let out = request_raw(
        addr,
        "POST",
        "/api/v1/logout",
        None,
        &[("Cookie", &cookie), ("X-CSRF-Token", &csrf)],
        Some(""),
    );
    assert_eq!(out.status, 204);
    assert_eq!(
        get_raw(addr, "/api/v1/me", None, &[("Cookie", &cookie)]).status,
        401
    );

    // Everything above is in the audit log, with the remote address of the logins.
    let audit = get(
        addr,
        "/api/v1/audit?since=2020-01-01T00:00:00Z",
        Some(ADMIN_TOKEN),
    );
    assert_eq!(audit.status, 200, "{}", audit.body);
    let rows = audit.json();
    let actions: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    for a in [
        "user.add",
        "user.list",
        "service.start",
        "login.failed",
        "login",
        "logout",
    ] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
    let login = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["action"] == "login")
        .unwrap();
    assert_eq!(login["remote_addr"], "127.0.0.1");
    assert_eq!(login["actor"], "user:wang");
    let add = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["action"] == "user.add")
        .unwrap();
    assert_eq!(add["actor"], "cli");

    svc.signal("TERM");
    svc.wait(Duration::from_secs(20));
}
