//! Live view end to end: a real RTSP camera that is not recorded, watched over the
//! `/api/v1/cameras/{id}/live` WebSocket as fragmented MP4.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use xueliang_tests::rtsp::{RtspOptions, RtspServer, gst_available};
use xueliang_tests::*;

const TOKEN: &str = "live-test-token-0123456789";
const OTHER_TOKEN: &str = "live-other-token-0123456789";

fn config(dir: &Path, url: &str) -> PathBuf {
    let text = format!(
        r#"[node]
id = "live-test"
data_dir = {dir:?}

[mqtt]
listen = "127.0.0.1:0"

[api]
listen = "127.0.0.1:0"

[[api.tokens]]
name = "admin"
token = "{TOKEN}"
role = "admin"

[[api.tokens]]
name = "other"
token = "{OTHER_TOKEN}"
role = "viewer"
cameras = ["cam2"]

[storage]
min_free_bytes = "1 MiB"

[[cameras]]
id = "cam1"
url = "{url}"
record = false

[[cameras]]
id = "cam2"
url = "rtsp://127.0.0.1:9/none"
enabled = false
"#,
        dir = dir.display().to_string()
    );
    write_file(dir, "node.toml", &text)
}

/// The top-level box types of an MP4 byte string.
fn boxes(mut b: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    while b.len() >= 8 {
        let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
        out.push(String::from_utf8_lossy(&b[4..8]).into_owned());
        if len < 8 || len > b.len() {
            break;
        }
        b = &b[len..];
    }
    out
}

fn request(
    addr: std::net::SocketAddr,
    token: &str,
    origin: Option<&str>,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut req = format!("ws://{addr}/api/v1/cameras/cam1/live")
        .into_client_request()
        .unwrap();
    let h = req.headers_mut();
    h.insert("authorization", format!("Bearer {token}").parse().unwrap());
    if let Some(o) = origin {
        h.insert("origin", o.parse().unwrap());
    }
    req
}

async fn refused_status(req: tokio_tungstenite::tungstenite::handshake::client::Request) -> u16 {
    match tokio_tungstenite::connect_async(req).await {
        Err(WsError::Http(res)) => res.status().as_u16(),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("the upgrade was accepted"),
    }
}

#[test]
fn live_view_sends_init_segment_and_fragments_of_an_unrecorded_camera() {
    if !gst_available() {
        eprintln!("skipped: GStreamer's RTSP server (python3-gi) is not available");
        return;
    }
    let cam = RtspServer::start(
        &RtspOptions::default()
            .size(320, 240)
            .fps(10)
            .gop(10)
            .bitrate_kbps(300),
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &cam.url());
    let svc = Service::start(&cfg, &[]);
    let addr = svc.addr();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // Refused before the upgrade: another origin, a camera outside the token's scope.
        let host = format!("http://{addr}");
        assert_eq!(
            refused_status(request(addr, TOKEN, Some("http://evil.example"))).await,
            403
        );
        assert_eq!(refused_status(request(addr, OTHER_TOKEN, None)).await, 403);

        let (mut ws, _) = tokio_tungstenite::connect_async(request(addr, TOKEN, Some(&host)))
            .await
            .expect("live view connects");
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut header = None;
        let mut init = None;
        let mut fragments = 0;
        while fragments < 15 {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = tokio::time::timeout(left, ws.next())
                .await
                .unwrap_or_else(|_| {
                    panic!("{fragments} fragments within 30 s (header {header:?}, init {init:?})")
                })
                .expect("socket open")
                .expect("message");
            match msg {
                Message::Text(t) => {
                    assert!(init.is_none(), "text after the init segment: {t}");
                    header = Some(serde_json::from_str::<serde_json::Value>(&t).unwrap());
                }
                Message::Binary(b) if init.is_none() => {
                    assert!(header.is_some(), "init segment before the header");
                    assert_eq!(boxes(&b), ["ftyp", "moov"]);
                    init = Some(b.len());
                }
                Message::Binary(b) => {
                    assert_eq!(boxes(&b), ["moof", "mdat"]);
                    fragments += 1;
                }
                _ => {}
            }
        }
        let header = header.unwrap();
        assert!(
            header["codec"].as_str().unwrap().starts_with("avc1."),
            "{header}"
        );
        assert_eq!(header["width"], 320);
        assert_eq!(header["height"], 240);
        ws.close(None).await.unwrap();
    });

    // Both ends of the view are in the audit log.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = get(addr, "/api/v1/audit", Some(TOKEN));
        assert_eq!(r.status, 200, "{}", r.body);
        let rows = r.json();
        let rows = rows.as_array().unwrap();
        let of = |action: &str| {
            rows.iter()
                .find(|e| e["action"] == action && e["target"] == "camera:cam1")
                .cloned()
        };
        if let (Some(start), Some(stop)) = (of("live.start"), of("live.stop")) {
            assert_eq!(start["actor"], "token:admin");
            assert!(
                stop["detail"]["duration_ms"].as_i64().unwrap() >= 0,
                "{stop}"
            );
            assert!(stop["detail"]["frames"].as_u64().unwrap() >= 15, "{stop}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no live.start/live.stop rows: {rows:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
