//! The API over HTTPS (`[api] tls`): a certificate made with `openssl`, the service serving
//! it, and a rustls client that trusts only that certificate. Checks the handshake (TLS 1.3,
//! ALPN `http/1.1`), HSTS on responses, a login cookie marked `Secure`, and that plain HTTP to
//! the TLS port gets no answer.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls;
use xueliang_tests::*;

const ADMIN_TOKEN: &str = "https-test-admin-token-0123456789";

/// A self-signed certificate for 127.0.0.1 and its key, in `dir`.
fn make_certificate(dir: &Path) {
    let out = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec"])
        .args(["-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
        .args(["-keyout", "key.pem", "-out", "cert.pem", "-days", "2"])
        .args(["-subj", "/CN=xueliang https test"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        // An end-entity certificate: webpki refuses a CA certificate as a server's.
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .current_dir(dir)
        .output()
        .expect("run openssl (Debian package openssl)");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn client_config(dir: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(dir.join("cert.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// One HTTP/1.1 request over TLS; returns the response head (lower-cased names) and body,
/// with the negotiated protocol version and ALPN.
fn https(
    addr: SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
    request: &str,
) -> (String, String, String) {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let name = ServerName::IpAddress(addr.ip().into());
    let conn = rustls::ClientConnection::new(tls.clone(), name).unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp);
    s.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    // The server closes after `Connection: close`; rustls reports an unclean close as an error
    // after the data, which is fine here.
    let _ = s.read_to_end(&mut raw);
    let version = format!("{:?}", s.conn.protocol_version());
    let alpn = String::from_utf8_lossy(s.conn.alpn_protocol().unwrap_or_default()).into_owned();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.to_owned(),
        body.to_owned(),
        format!("{version} {alpn}"),
    )
}

fn head_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[test]
fn the_api_serves_https_with_hsts_and_secure_cookies() {
    let dir = tempfile::tempdir().unwrap();
    make_certificate(dir.path());
    let text = format!(
        r#"[node]
id = "https-e2e"
data_dir = {data:?}
[mqtt]
listen = "127.0.0.1:0"
[api]
listen = "127.0.0.1:0"
tls = {{ cert_file = "cert.pem", key_file = "key.pem" }}
[[api.tokens]]
name = "admin"
token = "{ADMIN_TOKEN}"
role = "admin"
"#,
        data = dir.path().display().to_string()
    );
    let cfg = write_file(dir.path(), "https.toml", &text);
    let (st, _, err) = run_cli(
        &[
            "user",
            "add",
            "--config",
            cfg.to_str().unwrap(),
            "--username",
            "li",
            "--role",
            "operator",
        ],
        &[("XUELIANG_USER_PASSWORD", "a long enough secret")],
    );
    assert!(st.success(), "{err}");
    let mut svc = Service::start(&cfg, &[]);
    let addr = svc.addr();
    let tls = client_config(dir.path());

    let (head, body, proto) = https(
        addr,
        &tls,
        "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}\n{body}");
    assert_eq!(proto, "Some(TLSv1_3) http/1.1");
    let hsts = head_value(&head, "strict-transport-security").expect("HSTS over HTTPS");
    assert!(hsts.contains("max-age="), "{hsts}");

    let login = r#"{"username":"li","password":"a long enough secret"}"#;
    let (head, body, _) = https(
        addr,
        &tls,
        &format!(
            "POST /api/v1/login HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{login}",
            login.len()
        ),
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}\n{body}");
    let cookie = head_value(&head, "set-cookie").expect("a session cookie");
    assert!(
        cookie.contains("Secure") && cookie.contains("HttpOnly"),
        "{cookie}"
    );

    // Plain HTTP to the TLS port: no HTTP answer.
    let mut plain = TcpStream::connect(addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let _ = plain.read_to_end(&mut got);
    assert!(
        !String::from_utf8_lossy(&got).contains("200 OK"),
        "plain HTTP was served: {}",
        String::from_utf8_lossy(&got)
    );
    svc.signal("TERM");
    assert!(svc.wait(Duration::from_secs(20)).success());
}
