use std::collections::HashMap;
use std::path::Path;

use super::*;

fn load(text: &str) -> Result<Config, ConfigErrors> {
    load_str(text, "test.toml", Path::new("."), &NoEnv)
}

fn messages(text: &str) -> Vec<String> {
    load(text)
        .unwrap_err()
        .errors
        .iter()
        .map(|e| format!("{}@{}: {}", e.path, e.line.unwrap_or(0), e.message))
        .collect()
}

const MINIMAL: &str = r#"
[node]
id = "edge-01"
"#;

#[test]
fn minimal_config_takes_defaults() {
    let c = load(MINIMAL).unwrap();
    assert_eq!(c.node.id, "edge-01");
    assert_eq!(c.api.listen, "127.0.0.1:8080");
    assert_eq!(c.mqtt.mode, MqttMode::Embedded);
    assert_eq!(c.storage.segment_seconds, 60);
    assert_eq!(
        c.database_target(),
        DatabaseTarget::Sqlite {
            path: "/var/lib/xueliang/xueliang.db".into()
        }
    );
}

#[test]
fn reports_every_unknown_key_with_its_line() {
    let text = r#"[node]
id = "edge-01"
colour = "red"

[[cameras]]
id = "a"
url = "rtsp://10.0.0.1/live"
motion = { enabled = true, zonez = [] }

[apii]
listen = "127.0.0.1:1"
"#;
    let m = messages(text);
    assert_eq!(
        m,
        vec![
            "node.colour@3: unknown key",
            "cameras[0].motion.zonez@8: unknown key",
            "apii@10: unknown key",
        ]
    );
}

#[test]
fn reports_every_semantic_error_at_once() {
    let text = r#"[node]
id = "Edge 01"

[database]
url = "postgres://xl:secret@db.example/xl"

[mqtt]
mode = "external"

[[cameras]]
id = "gate"
url = "rtsp://10.0.0.1/live"

[[cameras]]
id = "gate"
url = "http://10.0.0.2/live"

[[cameras]]
id = "school"
url = "rtsp://admin:12345@10.0.0.3/live"
password = "x"

[[devices]]
id = "btn-1"
location = { lat = 95.0, lon = 104.7 }
cameras = ["gate", "nowhere"]

[[api.tokens]]
name = "ops"
token = "short"
role = "operator"
"#;
    let m = messages(text);
    let expect = [
        "node.id@2: \"Edge 01\" must start with a lowercase letter or a digit",
        "database.url@5: credentials must not be in the URL",
        "mqtt.url@7: is required when mode = \"external\"",
        "cameras[1].id@15: \"gate\" is used by another camera",
        "cameras[1].url@16: scheme must be one of rtsp, rtsps, got \"http\"",
        "cameras[2].url@20: credentials must not be in the URL; use username/password",
        "cameras[2].username@18: is required when a password is set",
        "devices[0].location.lat@25: must be between -90 and 90",
        "devices[0].cameras[1]@26: no camera has id \"nowhere\"",
        "api.tokens[0].token@30: must be at least 16 characters",
    ];
    for e in expect {
        assert!(
            m.iter().any(|x| x.starts_with(e)),
            "missing {e:?} in {m:#?}"
        );
    }
    assert_eq!(m.len(), expect.len(), "{m:#?}");
}

#[test]
fn type_errors_name_the_key_and_line() {
    let text = "[node]\nid = \"a\"\n[storage]\nsegment_seconds = \"sixty\"\n";
    let m = messages(text);
    assert_eq!(m.len(), 1, "{m:?}");
    assert!(
        m[0].starts_with("storage.segment_seconds@4: invalid type"),
        "{m:?}"
    );
}

#[test]
fn syntax_errors_have_a_line() {
    let m = messages("[node]\nid = \"a\"\n[storage\n");
    assert_eq!(m.len(), 1);
    assert!(m[0].starts_with("(document)@3: TOML syntax"), "{m:?}");
}

#[test]
fn display_is_file_line_path_message() {
    let e = load("[node]\nid = \"a\"\nbogus = 1\n").unwrap_err();
    assert_eq!(e.to_string(), "test.toml:3: node.bogus: unknown key");
}

#[test]
fn secrets_come_from_files_and_environment() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cam.pass"), "from-file\n").unwrap();
    std::fs::write(dir.path().join("ops.token"), "0123456789abcdef-file\n").unwrap();
    let text = r#"[node]
id = "n"
[[cameras]]
id = "gate-01"
url = "rtsp://10.0.0.1/live"
username = "admin"
password_file = "cam.pass"
[[cameras]]
id = "yard"
url = "rtsp://10.0.0.2/live"
username = "admin"
password = "inline"
[[api.tokens]]
name = "ops"
token_file = "ops.token"
role = "operator"
[[api.tokens]]
name = "wall"
role = "viewer"
"#;
    let mut env = HashMap::new();
    env.insert(
        "XUELIANG_CAMERA_YARD_PASSWORD".to_owned(),
        "from-env".to_owned(),
    );
    env.insert(
        "XUELIANG_TOKEN_WALL_VALUE".to_owned(),
        "0123456789abcdef-env".to_owned(),
    );
    let c = load_str(text, "t.toml", dir.path(), &env).unwrap();
    assert_eq!(
        c.cameras[0].password.as_ref().unwrap().expose(),
        "from-file"
    );
    assert_eq!(c.cameras[1].password.as_ref().unwrap().expose(), "from-env");
    assert_eq!(
        c.api.tokens[0].token.as_ref().unwrap().expose(),
        "0123456789abcdef-file"
    );
    assert_eq!(
        c.api.tokens[1].token.as_ref().unwrap().expose(),
        "0123456789abcdef-env"
    );

    // Without the environment the second token is missing, and a missing file is named.
    let broken = text.replace("cam.pass", "missing.pass");
    let e = load_str(&broken, "t.toml", dir.path(), &NoEnv).unwrap_err();
    let s = e.to_string();
    assert!(
        s.contains("t.toml:7: cameras[0].password_file: cannot read"),
        "{s}"
    );
    assert!(
        s.contains(
            "api.tokens[1].token: missing: set token, token_file or XUELIANG_TOKEN_WALL_VALUE"
        ),
        "{s}"
    );
    // The secret values never appear in errors.
    assert!(!s.contains("inline"), "{s}");
}

#[test]
fn gb28181_ids_are_checked() {
    let text = r#"[node]
id = "n"
[bridge.gb28181]
local_id = "3403000000200000001"
server_id = "34020000002000000001"
server_domain = "3402000000"
server_addr = "city.example:5060"
"#;
    let m = messages(text);
    assert_eq!(m.len(), 2, "{m:?}");
    assert!(
        m.iter().any(|x| x
            .starts_with("bridge.gb28181.local_id@4: \"3403000000200000001\" must be a 20-digit")),
        "{m:?}"
    );
    assert!(
        m.iter()
            .any(|x| x.starts_with("bridge.gb28181.password") && x.contains("is required")),
        "{m:?}"
    );
    // With a password, only the bad id remains.
    let m = messages(&format!("{text}password = \"sip-secret-0001\"\n"));
    assert_eq!(m.len(), 1, "{m:?}");
}

#[test]
fn sizes_parse_with_units() {
    assert_eq!(ByteSize::parse("2 GiB").unwrap().0, 2 << 30);
    assert_eq!(ByteSize::parse("500GB").unwrap().0, 500_000_000_000);
    assert_eq!(ByteSize::parse("1048576").unwrap().0, 1 << 20);
    assert!(ByteSize::parse("lots").is_err());
    assert!(
        ByteSize::parse("5 parsecs")
            .unwrap_err()
            .contains("unknown size unit")
    );
}

#[test]
fn api_tls_files_are_resolved_and_must_exist() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert.pem"), TEST_CERT).unwrap();
    std::fs::write(dir.path().join("key.pem"), TEST_KEY).unwrap();
    let text = "[node]\nid = \"n\"\n[api]\nlisten = \"0.0.0.0:8443\"\n\
                tls = { cert_file = \"cert.pem\", key_file = \"key.pem\" }\n";
    let c = load_str(text, "t.toml", dir.path(), &NoEnv).unwrap();
    let tls = c.api.tls.as_ref().unwrap();
    assert_eq!(tls.cert_file, dir.path().join("cert.pem"));
    assert_eq!(tls.key_file, dir.path().join("key.pem"));
    assert_eq!(c.api.session_idle_minutes, 12 * 60);

    let broken = text.replace("key.pem", "nokey.pem");
    let s = load_str(&broken, "t.toml", dir.path(), &NoEnv)
        .unwrap_err()
        .to_string();
    assert!(s.contains("api.tls.key_file: cannot read"), "{s}");
    // The certificate where the key should be, and a truncated certificate.
    let swapped = text.replace("key.pem", "cert.pem");
    let s = load_str(&swapped, "t.toml", dir.path(), &NoEnv)
        .unwrap_err()
        .to_string();
    assert!(
        s.contains("api.tls.key_file: ") && s.contains("no PEM private key"),
        "{s}"
    );
    std::fs::write(dir.path().join("cert.pem"), "-----BEGIN CERTIFICATE-----\n").unwrap();
    let s = load_str(text, "t.toml", dir.path(), &NoEnv)
        .unwrap_err()
        .to_string();
    assert!(
        s.contains("api.tls.cert_file: ") && s.contains("PEM"),
        "{s}"
    );
    std::fs::write(dir.path().join("cert.pem"), TEST_CERT).unwrap();
    let s = load_str(
        &text.replace("tls = {", "tls = { bogus = 1,"),
        "t.toml",
        dir.path(),
        &NoEnv,
    )
    .unwrap_err()
    .to_string();
    assert!(s.contains("api.tls.bogus: unknown key"), "{s}");
}

/// A self-signed certificate and its key, only for checking that config validation reads PEM.
const TEST_CERT: &str = include_str!("testdata/cert.pem");
const TEST_KEY: &str = include_str!("testdata/key.pem");

fn bridge_mqtt_config(dir: &std::path::Path, mqtt: &str) -> Result<Config, String> {
    let text = format!("[node]\nid = \"n\"\n[bridge.mqtt]\n{mqtt}");
    load_str(&text, "t.toml", dir, &NoEnv).map_err(|e| e.to_string())
}

#[test]
fn bridge_mqtt_tls_takes_a_ca_and_a_client_pair_only_with_mqtts() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), TEST_CERT).unwrap();
    std::fs::write(dir.path().join("node.pem"), TEST_CERT).unwrap();
    std::fs::write(dir.path().join("node.key"), TEST_KEY).unwrap();

    let c = bridge_mqtt_config(
        dir.path(),
        "url = \"mqtts://city.example:8883\"\nca_file = \"ca.pem\"\n\
         client_cert_file = \"node.pem\"\nclient_key_file = \"node.key\"\n",
    )
    .unwrap();
    let m = c.bridge.mqtt.as_ref().unwrap();
    assert!(m.is_tls());
    assert_eq!(
        m.ca_file.as_deref(),
        Some(dir.path().join("ca.pem").as_path())
    );
    assert_eq!(
        m.client_key_file.as_deref(),
        Some(dir.path().join("node.key").as_path())
    );
    // System roots when no CA is given; ssl:// is the same as mqtts://.
    let c = bridge_mqtt_config(dir.path(), "url = \"ssl://city.example\"\n").unwrap();
    assert!(c.bridge.mqtt.unwrap().is_tls());

    // TLS files with a plain URL.
    let e = bridge_mqtt_config(
        dir.path(),
        "url = \"mqtt://city.example\"\nca_file = \"ca.pem\"\n",
    )
    .unwrap_err();
    assert!(e.contains("bridge.mqtt.ca_file: is for TLS"), "{e}");
    // Half a client pair.
    let e = bridge_mqtt_config(
        dir.path(),
        "url = \"mqtts://city.example\"\nclient_cert_file = \"node.pem\"\n",
    )
    .unwrap_err();
    assert!(
        e.contains("bridge.mqtt.client_key_file: is required when client_cert_file is set"),
        "{e}"
    );
    // A key where the CA should be, and a missing file.
    let e = bridge_mqtt_config(
        dir.path(),
        "url = \"mqtts://city.example\"\nca_file = \"node.key\"\n",
    )
    .unwrap_err();
    assert!(
        e.contains("bridge.mqtt.ca_file: ") && e.contains("no certificate in it"),
        "{e}"
    );
    let e = bridge_mqtt_config(
        dir.path(),
        "url = \"mqtts://city.example\"\nca_file = \"nope.pem\"\n",
    )
    .unwrap_err();
    assert!(e.contains("bridge.mqtt.ca_file: cannot read"), "{e}");
    // Other schemes are still refused.
    let e = bridge_mqtt_config(dir.path(), "url = \"wss://city.example\"\n").unwrap_err();
    assert!(e.contains("bridge.mqtt.url: scheme must be one of"), "{e}");
}
