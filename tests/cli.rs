//! The command line: check-config on the shipped examples and on broken files, migrate, logging.

use xueliang_tests::*;

#[test]
fn check_config_accepts_every_shipped_example() {
    for name in ["edge.toml", "centre.toml", "demo.toml"] {
        let path = repo_root().join("config").join(name);
        let (st, out, err) = run_cli(&["check-config", "--config", path.to_str().unwrap()], &[]);
        assert!(st.success(), "{name} rejected:\n{err}");
        assert!(out.contains(": ok: node "), "{out}");
    }
}

#[test]
fn check_config_names_every_bad_key_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(
        dir.path(),
        "broken.toml",
        r#"[node]
id = "edge-01"
colour = "red"

[api]
listen = "localhost"

[[cameras]]
id = "gate"
url = "rtsp://10.0.0.1/live"

[[cameras]]
id = "yard"
url = "rtsp://10.0.0.2/live"

[[cameras]]
id = "school"
url = "rtsp://admin:12345@10.0.0.3/live"

[[devices]]
id = "btn-1"
cameras = ["nowhere"]
"#,
    );
    let (st, out, err) = run_cli(&["check-config", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(st.code(), Some(2), "{out}{err}");
    let p = path.display();
    for expected in [
        format!("{p}:3: node.colour: unknown key"),
        format!("{p}:6: api.listen: \"localhost\" is not an address such as 127.0.0.1:8080"),
        format!(
            "{p}:18: cameras[2].url: credentials must not be in the URL; use username/password"
        ),
        format!("{p}:22: devices[0].cameras[0]: no camera has id \"nowhere\""),
        format!("{p}: 4 problem(s) found"),
    ] {
        assert!(err.contains(&expected), "missing {expected:?} in:\n{err}");
    }
    // The password in the bad URL is never echoed back.
    assert!(!err.contains("12345"), "{err}");
}

#[test]
fn check_config_reports_missing_files_and_syntax() {
    let (st, _, err) = run_cli(&["check-config", "--config", "/nonexistent/x.toml"], &[]);
    assert_eq!(st.code(), Some(2));
    assert!(
        err.contains("/nonexistent/x.toml: (document): cannot read the file"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "syntax.toml", "[node\nid = 1\n");
    let (st, _, err) = run_cli(&["check-config", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(st.code(), Some(2));
    assert!(
        err.contains("syntax.toml:1: (document): TOML syntax"),
        "{err}"
    );
}

#[test]
fn secrets_from_the_environment_satisfy_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(
        dir.path(),
        "env.toml",
        "[node]\nid = \"n\"\n[[api.tokens]]\nname = \"ops\"\nrole = \"admin\"\n",
    );
    let args = ["check-config", "--config", path.to_str().unwrap()];
    let (st, _, err) = run_cli(&args, &[]);
    assert_eq!(st.code(), Some(2));
    assert!(err.contains("XUELIANG_TOKEN_OPS_VALUE"), "{err}");
    let (st, _, err) = run_cli(
        &args,
        &[("XUELIANG_TOKEN_OPS_VALUE", "0123456789abcdef0123")],
    );
    assert!(st.success(), "{err}");
}

#[test]
fn migrate_creates_the_schema_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_file(
        dir.path(),
        "m.toml",
        &example_config("edge.toml", dir.path()),
    );
    let env = [("XUELIANG_LOG_FORMAT", "json")];
    let (st, _, err) = run_cli(&["migrate", "--config", cfg.to_str().unwrap()], &env);
    assert!(st.success(), "{err}");
    assert!(err.contains(r#""message":"applied migration""#), "{err}");
    assert!(dir.path().join("xueliang.db").exists());
    let (st, _, err) = run_cli(&["migrate", "--config", cfg.to_str().unwrap()], &env);
    assert!(st.success(), "{err}");
    assert!(
        !err.contains("applied migration"),
        "second run applies nothing: {err}"
    );
    let latest = xueliang_store::MIGRATIONS_SQLITE
        .last()
        .map(|m| m.version)
        .unwrap_or(0);
    assert!(err.contains(&format!(r#""schema":{latest}"#)), "{err}");
}

#[test]
fn bad_log_settings_are_refused_by_name() {
    let cfg = repo_root().join("config/edge.toml");
    let (st, _, err) = run_cli(
        &["migrate", "--config", cfg.to_str().unwrap()],
        &[("XUELIANG_LOG_FORMAT", "xml")],
    );
    assert_eq!(st.code(), Some(2));
    assert!(
        err.contains("XUELIANG_LOG_FORMAT=\"xml\" is not a log format"),
        "{err}"
    );
}
