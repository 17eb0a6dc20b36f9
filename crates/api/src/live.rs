//! Live view: `GET /api/v1/cameras/{id}/live`, a WebSocket carrying the camera's main stream as
//! fragmented MP4 for Media Source Extensions.
//!
//! [`LiveHub`] is fed by ingest for every enabled camera, recorded or not. Per camera it keeps
//! the frames since the last key frame (bounded), so a viewer starts at once, and broadcasts
//! new frames. A viewer that falls behind (its queue overflows) drops frames up to the next key
//! frame and is told how many with a `{"skipped": n}` text message.
//!
//! Messages: text `{"codec": "avc1.64001f", "width": W, "height": H}` before each init segment,
//! then binary: the init segment (ftyp + moov), then one moof+mdat fragment per frame.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Extension;
use axum::extract::ws::{
    Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection,
};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::broadcast;
use xueliang_core::ErrorKind;
use xueliang_core::media::{VideoFrame, VideoParams};
use xueliang_record::live::LiveMuxer;

use crate::{ApiError, AppState, Principal};

/// Most frames kept from the last key frame: 30 s at 25 fps. A longer GOP is not kept (a
/// viewer then waits for the next key frame).
const GOP_MAX_FRAMES: usize = 750;
/// Most bytes kept from the last key frame.
const GOP_MAX_BYTES: usize = 32 << 20;
/// Frames a viewer may fall behind before it skips to the next key frame.
const VIEWER_QUEUE_FRAMES: usize = 128;
/// A viewer whose socket takes this long to accept one message is dropped.
const SEND_TIMEOUT: Duration = Duration::from_secs(15);

/// What viewers of a camera are told.
#[derive(Clone, Debug)]
enum Item {
    Frame(Arc<VideoFrame>),
    /// The camera's session restarted: media time starts afresh.
    Restart,
}

#[derive(Default)]
struct Gop {
    frames: Vec<Arc<VideoFrame>>,
    bytes: usize,
}

struct Channel {
    gop: Mutex<Gop>,
    tx: broadcast::Sender<Item>,
}

/// Per camera, the current GOP and a broadcast of new frames. Cheap to clone.
#[derive(Clone, Default)]
pub struct LiveHub {
    cameras: Arc<Mutex<HashMap<String, Arc<Channel>>>>,
}

impl std::fmt::Debug for LiveHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self
            .cameras
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        f.debug_struct("LiveHub").field("cameras", &n).finish()
    }
}

impl LiveHub {
    fn channel(&self, camera: &str) -> Arc<Channel> {
        let mut map = self.cameras.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = map.get(camera) {
            return c.clone();
        }
        let c = Arc::new(Channel {
            gop: Mutex::new(Gop::default()),
            tx: broadcast::channel(VIEWER_QUEUE_FRAMES).0,
        });
        map.insert(camera.to_owned(), c.clone());
        c
    }

    /// A frame of the camera's main stream, in decode order. Never blocks on viewers.
    pub fn frame(&self, camera: &str, f: &VideoFrame) {
        let ch = self.channel(camera);
        let mut gop = ch.gop.lock().unwrap_or_else(PoisonError::into_inner);
        let f = Arc::new(f.clone());
        if f.is_key {
            gop.frames.clear();
            gop.bytes = 0;
        }
        if f.is_key || !gop.frames.is_empty() {
            if gop.frames.len() >= GOP_MAX_FRAMES || gop.bytes + f.data.len() > GOP_MAX_BYTES {
                // Too long to keep; a new viewer waits for the next key frame.
                gop.frames.clear();
                gop.bytes = 0;
            } else {
                gop.bytes += f.data.len();
                gop.frames.push(f.clone());
            }
        }
        // Sent under the GOP lock, so a viewer subscribing sees each frame exactly once.
        let _ = ch.tx.send(Item::Frame(f));
    }

    /// The camera's session (re)started or ended: what was kept cannot continue.
    pub fn restart(&self, camera: &str) {
        let ch = self.channel(camera);
        let mut gop = ch.gop.lock().unwrap_or_else(PoisonError::into_inner);
        gop.frames.clear();
        gop.bytes = 0;
        let _ = ch.tx.send(Item::Restart);
    }

    /// The frames kept since the last key frame, and every later one.
    fn subscribe(&self, camera: &str) -> (Vec<Arc<VideoFrame>>, broadcast::Receiver<Item>) {
        let ch = self.channel(camera);
        let gop = ch.gop.lock().unwrap_or_else(PoisonError::into_inner);
        (gop.frames.clone(), ch.tx.subscribe())
    }

    /// Viewers of a camera now, for tests and diagnostics.
    pub fn viewers(&self, camera: &str) -> usize {
        self.channel(camera).tx.receiver_count()
    }
}

/// Whether the browser's `Origin` names the host it connected to. A request without `Origin`
/// (not from a browser) passes only with a bearer token: cookies are what a cross-site page
/// could borrow.
fn check_origin(headers: &HeaderMap, who: &Principal) -> Result<(), ApiError> {
    let deny = |why: String| Err(ApiError::new(ErrorKind::PermissionDenied, why));
    let Some(origin) = headers.get(header::ORIGIN) else {
        if who.session.is_some() {
            return deny("live view from a browser session needs an Origin header".into());
        }
        return Ok(());
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let origin = origin.to_str().unwrap_or_default();
    let origin_host = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .unwrap_or_default();
    if host.is_empty() || !origin_host.eq_ignore_ascii_case(host) {
        tracing::info!(actor = %who.actor, origin, host, "refused live view from another origin");
        return deny(format!(
            "live view refused: Origin {origin:?} does not match the host {host:?}"
        ));
    }
    Ok(())
}

fn header_message(p: &VideoParams) -> Message {
    let v = serde_json::json!({ "codec": p.rfc6381, "width": p.width, "height": p.height });
    Message::Text(v.to_string().into())
}

pub(crate) async fn live(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    crate::recordings::check_camera(&st, &who, &id)?;
    check_origin(&headers, &who)?;
    let ws = ws.map_err(|e| {
        ApiError::new(
            ErrorKind::InvalidArgument,
            format!("live view is a WebSocket: {e}"),
        )
    })?;
    let started = st.clock.now();
    crate::audit::record(
        &st,
        who.actor.clone(),
        who.kind,
        "live.start",
        Some(format!("camera:{id}")),
        serde_json::json!({ "camera": id }),
        who.remote_addr.clone(),
    )
    .await?;
    tracing::info!(camera = %id, actor = %who.actor, "live view started");
    Ok(ws
        .on_upgrade(move |socket| async move {
            let stats = stream(socket, &st, &id).await;
            let ended = st.clock.now();
            let duration_ms = ended.as_millis() - started.as_millis();
            tracing::info!(camera = %id, actor = %who.actor, duration_ms, frames = stats.frames, skipped = stats.skipped, "live view ended");
            if let Err(e) = crate::audit::record(
                &st,
                who.actor.clone(),
                who.kind,
                "live.stop",
                Some(format!("camera:{id}")),
                serde_json::json!({
                    "camera": id, "duration_ms": duration_ms,
                    "frames": stats.frames, "skipped": stats.skipped,
                }),
                who.remote_addr.clone(),
            )
            .await
            {
                tracing::error!(camera = %id, actor = %who.actor, err = ?e, "cannot record the end of a live view");
            }
        })
        .into_response())
}

#[derive(Debug, Default)]
struct Stats {
    frames: u64,
    skipped: u64,
}

/// One viewer's session: the kept GOP, then new frames, until either side stops.
struct Viewer {
    mux: LiveMuxer,
    stats: Stats,
    /// Frames dropped since the last one sent, to report with the next key frame.
    skipping: Option<u64>,
}

impl Viewer {
    fn new() -> Self {
        Viewer {
            mux: LiveMuxer::new(),
            stats: Stats::default(),
            skipping: None,
        }
    }

    /// Sends what a frame turns into; `Err` when the socket is gone or too slow.
    async fn send(&mut self, socket: &mut WebSocket, f: &VideoFrame) -> Result<(), ()> {
        let msgs = match self.messages(f) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(err = %e, "live view cannot frame the stream");
                return Err(());
            }
        };
        if msgs.is_empty() {
            return Ok(());
        }
        for m in msgs {
            match tokio::time::timeout(SEND_TIMEOUT, socket.send(m)).await {
                Ok(Ok(())) => {}
                _ => return Err(()),
            }
        }
        self.stats.frames += 1;
        Ok(())
    }

    /// The messages a frame turns into: none while waiting for a key frame.
    fn messages(&mut self, f: &VideoFrame) -> Result<Vec<Message>, xueliang_record::mp4::Mp4Error> {
        let out = self.mux.frame(f)?;
        let mut msgs = Vec::new();
        if out.init.is_some()
            && let Some(p) = self.mux.params()
        {
            msgs.push(header_message(p));
        }
        let Some(fragment) = out.fragment else {
            if let Some(n) = self.skipping.as_mut() {
                *n += 1;
                self.stats.skipped += 1;
            }
            return Ok(Vec::new());
        };
        if let Some(n) = self.skipping.take() {
            msgs.push(Message::Text(
                serde_json::json!({ "skipped": n }).to_string().into(),
            ));
        }
        if let Some(init) = out.init {
            msgs.push(Message::Binary(init.into()));
        }
        msgs.push(Message::Binary(fragment.into()));
        Ok(msgs)
    }

    fn lagged(&mut self, n: u64) {
        self.mux.restart();
        *self.skipping.get_or_insert(0) += n;
        self.stats.skipped += n;
    }
}

async fn stream(mut socket: WebSocket, st: &AppState, camera: &str) -> Stats {
    let (gop, mut rx) = st.live.subscribe(camera);
    let mut v = Viewer::new();
    for f in &gop {
        if v.send(&mut socket, f).await.is_err() {
            return v.stats;
        }
    }
    drop(gop);
    loop {
        tokio::select! {
            _ = st.shutdown.cancelled() => {
                let _ = socket.send(Message::Close(None)).await;
                break;
            }
            msg = socket.recv() => match msg {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                Some(Ok(_)) => {}
            },
            item = rx.recv() => match item {
                Ok(Item::Frame(f)) => {
                    if v.send(&mut socket, &f).await.is_err() {
                        break;
                    }
                }
                Ok(Item::Restart) => v.mux.restart(),
                Err(broadcast::error::RecvError::Lagged(n)) => v.lagged(n),
                Err(broadcast::error::RecvError::Closed) => break,
            },
        }
    }
    v.stats
}

#[cfg(test)]
mod tests {
    use super::*;
    use xueliang_core::Timestamp;
    use xueliang_core::media::VideoCodec;

    fn kinds(msgs: &[Message]) -> Vec<String> {
        msgs.iter()
            .map(|m| match m {
                Message::Text(t) => t.to_string(),
                Message::Binary(b) => String::from_utf8_lossy(&b[4..8]).into_owned(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_lagging_viewer_skips_to_the_next_key_frame_and_is_told() {
        let mut v = Viewer::new();
        assert!(v.messages(&frame(0, false)).unwrap().is_empty());
        assert_eq!(
            kinds(&v.messages(&frame(3600, true)).unwrap()),
            [
                r#"{"codec":"avc1.64000d","height":48,"width":64}"#,
                "ftyp",
                "moof"
            ]
        );
        assert_eq!(kinds(&v.messages(&frame(7200, false)).unwrap()), ["moof"]);
        v.lagged(5);
        assert!(v.messages(&frame(30_000, false)).unwrap().is_empty());
        assert_eq!(
            kinds(&v.messages(&frame(33_600, true)).unwrap()),
            [r#"{"skipped":6}"#, "moof"]
        );
        assert_eq!(kinds(&v.messages(&frame(37_200, false)).unwrap()), ["moof"]);
        assert_eq!(v.stats.skipped, 6);
    }

    fn frame(pts: i64, key: bool) -> VideoFrame {
        VideoFrame {
            pts,
            wall: Timestamp::from_millis(pts / 90),
            is_key: key,
            data: vec![0, 0, 0, 1, 0x65].into(),
            params: Arc::new(VideoParams {
                codec: VideoCodec::H264,
                width: 64,
                height: 48,
                // avcC: version 1, High profile, 4-byte lengths, one SPS, one PPS.
                decoder_config: vec![
                    1, 0x64, 0, 0x0d, 0xff, 0xe1, 0, 4, 0x67, 0x64, 0, 0x0d, 1, 0, 2, 0x68, 0xee,
                ]
                .into(),
                rfc6381: "avc1.64000d".into(),
                pixel_aspect: None,
            }),
            loss: 0,
        }
    }

    #[test]
    fn keeps_the_last_gop_and_broadcasts_new_frames() {
        let hub = LiveHub::default();
        hub.frame("gate", &frame(0, false)); // nothing to start from yet
        assert!(hub.subscribe("gate").0.is_empty());
        for i in 0..3 {
            hub.frame("gate", &frame(3600 * (i + 1), i == 0));
        }
        let (gop, mut rx) = hub.subscribe("gate");
        assert_eq!(gop.len(), 3);
        assert!(gop[0].is_key);
        hub.frame("gate", &frame(4 * 3600, true));
        assert!(matches!(rx.try_recv(), Ok(Item::Frame(f)) if f.pts == 4 * 3600));
        assert_eq!(hub.subscribe("gate").0.len(), 1);
        hub.restart("gate");
        assert!(matches!(rx.try_recv(), Ok(Item::Restart)));
        assert!(hub.subscribe("gate").0.is_empty());
        assert_eq!(hub.viewers("gate"), 1);
    }
}
