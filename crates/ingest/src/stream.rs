//! One camera stream: a long-lived task that connects with retina, hands frames to the sinks,
//! watches for stalls and reconnects with backoff. Every await races shutdown.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use retina::client::{Credentials, PlayOptions, SessionGroup, SessionOptions, SetupOptions};
use retina::codec::{CodecItem, FrameFormat, ParametersRef};
use tokio::time::{Duration, Instant};
use tracing::Instrument;
use xueliang_core::Clock;
use xueliang_core::config::Transport;
use xueliang_core::health::HealthBoard;
use xueliang_core::media::{VideoCodec, VideoFrame, VideoParams};
use xueliang_core::model::CameraState;
use xueliang_core::shutdown::Shutdown;

use crate::{
    Backoff, FrameSink, IngestEvent, IngestMetrics, Mapped, StateSink, StreamSpec, WallMapper,
};

/// Everything one stream task needs.
#[derive(Clone)]
pub struct StreamContext {
    pub spec: StreamSpec,
    pub sinks: Vec<Arc<dyn FrameSink>>,
    pub state: Arc<dyn StateSink>,
    pub health: HealthBoard,
    pub metrics: IngestMetrics,
    pub clock: Arc<dyn Clock>,
    /// Sessions of one camera share a group, so a reconnect first waits out the stale session
    /// the camera may still be streaming to (cheap cameras allow one or two sessions in all).
    pub group: Arc<SessionGroup>,
    pub shutdown: Shutdown,
}

impl std::fmt::Debug for StreamContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamContext")
            .field("spec", &self.spec)
            .finish()
    }
}

/// Why a session ended.
#[derive(Debug)]
enum End {
    Shutdown,
    Failed(String),
}

/// Runs until shutdown. Never returns an error: failures become state, logs and retries.
pub async fn run_stream(ctx: StreamContext) {
    let span = tracing::info_span!("ingest", camera = %ctx.spec.camera_id, stream = ctx.spec.kind.as_str());
    Supervisor::new(ctx).run().instrument(span).await
}

struct Supervisor {
    ctx: StreamContext,
    state: Option<(CameraState, Option<String>)>,
}

impl Supervisor {
    fn new(ctx: StreamContext) -> Self {
        Supervisor { ctx, state: None }
    }

    fn set_state(&mut self, state: CameraState, error: Option<String>) {
        if self.state.as_ref() == Some(&(state, error.clone())) {
            return;
        }
        let ctx = &self.ctx;
        let now = ctx.clock.now();
        let (cam, kind) = (ctx.spec.camera_id.as_str(), ctx.spec.kind);
        ctx.metrics.set_state(cam, kind, state);
        let changed = self.state.as_ref().map(|(s, _)| *s) != Some(state);
        ctx.health.update(cam, kind, now, |h| {
            if changed {
                h.since = now;
            }
            h.state = state;
            h.last_error = error.clone();
            if state != CameraState::Online {
                h.fps = None;
                h.bitrate_bps = None;
            }
        });
        ctx.state.on_state(cam, kind, state, error.as_deref(), now);
        self.state = Some((state, error));
    }

    async fn run(mut self) {
        let mut backoff = Backoff::new(self.ctx.spec.backoff);
        self.set_state(CameraState::Connecting, None);
        loop {
            if self.ctx.shutdown.is_triggered() {
                break;
            }
            let stale = self.ctx.group.stale_sessions();
            if stale.num_sessions > 0 {
                tracing::info!(
                    sessions = stale.num_sessions,
                    "waiting for the camera's stale sessions to end before reconnecting"
                );
                tokio::select! {
                    _ = self.ctx.shutdown.cancelled() => break,
                    _ = self.ctx.group.await_stale_sessions(&stale) => {}
                }
            }
            let started = Instant::now();
            let mut session = Session::new(self.ctx.clone());
            let end = session.run(&mut self).await;
            let online_for = session
                .online_since
                .map(|t| t.elapsed())
                .unwrap_or_default();
            if session.started {
                let at = self.ctx.clock.now();
                let error = match &end {
                    End::Failed(e) => Some(e.as_str()),
                    End::Shutdown => None,
                };
                for s in &self.ctx.sinks {
                    s.on_event(
                        &self.ctx.spec.camera_id,
                        self.ctx.spec.kind,
                        IngestEvent::SessionEnded { at, error },
                    );
                }
            }
            match end {
                End::Shutdown => break,
                End::Failed(e) => {
                    self.ctx
                        .metrics
                        .reconnect(&self.ctx.spec.camera_id, self.ctx.spec.kind);
                    self.ctx.health.update(
                        &self.ctx.spec.camera_id,
                        self.ctx.spec.kind,
                        self.ctx.clock.now(),
                        |h| h.reconnects += 1,
                    );
                    let delay = backoff.next_delay(online_for, rand::random::<f64>());
                    // The same failure again (a camera that stays unplugged) is news only once.
                    let repeated =
                        self.state.as_ref().and_then(|(_, err)| err.as_deref()) == Some(e.as_str());
                    let ran_for_ms = started.elapsed().as_millis() as u64;
                    let retry_in_ms = delay.as_millis() as u64;
                    if repeated {
                        tracing::debug!(err = %e, ran_for_ms, retry_in_ms, "stream failed again");
                    } else {
                        tracing::warn!(err = %e, ran_for_ms, retry_in_ms, "stream failed");
                    }
                    self.set_state(CameraState::Offline, Some(e));
                    tokio::select! {
                        _ = self.ctx.shutdown.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        self.set_state(CameraState::Offline, Some("service stopped".into()));
    }
}

/// One RTSP session, from DESCRIBE to its end.
struct Session {
    ctx: StreamContext,
    started: bool,
    online_since: Option<Instant>,
}

fn convert_params(p: &retina::codec::VideoParameters) -> Result<VideoParams, String> {
    let rfc = p.rfc6381_codec().to_owned();
    let codec = if rfc.starts_with("avc1") {
        VideoCodec::H264
    } else if rfc.starts_with("hvc1") || rfc.starts_with("hev1") {
        VideoCodec::H265
    } else {
        return Err(format!("unsupported codec {rfc:?}; record H.264 or H.265"));
    };
    let (width, height) = p.pixel_dimensions();
    Ok(VideoParams {
        codec,
        width,
        height,
        decoder_config: Bytes::copy_from_slice(p.extra_data()),
        rfc6381: rfc,
        pixel_aspect: p.pixel_aspect_ratio(),
    })
}

/// Sliding-window frame and bit rates for the health board.
#[derive(Default)]
struct Rates {
    window: VecDeque<(Instant, usize)>,
    last_publish: Option<Instant>,
}

impl Rates {
    const SPAN: Duration = Duration::from_secs(5);

    fn add(&mut self, now: Instant, bytes: usize) -> Option<(f64, u64)> {
        self.window.push_back((now, bytes));
        while self
            .window
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > Self::SPAN)
        {
            self.window.pop_front();
        }
        if self
            .last_publish
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return None;
        }
        self.last_publish = Some(now);
        let first = self.window.front()?.0;
        let span = now.duration_since(first).as_secs_f64();
        if span < 0.5 || self.window.len() < 2 {
            return None;
        }
        let frames = (self.window.len() - 1) as f64;
        let bytes: usize = self.window.iter().skip(1).map(|(_, b)| b).sum();
        Some((frames / span, (bytes as f64 * 8.0 / span) as u64))
    }
}

impl Session {
    fn new(ctx: StreamContext) -> Self {
        Session {
            ctx,
            started: false,
            online_since: None,
        }
    }

    async fn step<T, E: std::fmt::Display>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, End> {
        let limit = self.ctx.spec.request_timeout;
        tokio::select! {
            _ = self.ctx.shutdown.cancelled() => Err(End::Shutdown),
            r = tokio::time::timeout(limit, fut) => match r {
                Err(_) => Err(End::Failed(format!("{what}: no answer within {}s", limit.as_secs()))),
                Ok(Err(e)) => Err(End::Failed(format!("{what}: {e}"))),
                Ok(Ok(v)) => Ok(v),
            },
        }
    }

    async fn run(&mut self, sup: &mut Supervisor) -> End {
        match self.run_inner(sup).await {
            Ok(never) => match never {},
            Err(end) => end,
        }
    }

    async fn run_inner(&mut self, sup: &mut Supervisor) -> Result<std::convert::Infallible, End> {
        let spec = &self.ctx.spec;
        let creds = match (&spec.username, &spec.password) {
            (Some(u), Some(p)) => Some(Credentials {
                username: u.clone(),
                password: p.expose().to_owned(),
            }),
            (Some(u), None) => Some(Credentials {
                username: u.clone(),
                password: String::new(),
            }),
            _ => None,
        };
        let opts = SessionOptions::default()
            .creds(creds)
            .session_group(self.ctx.group.clone())
            .user_agent(format!("xueliang/{}", env!("CARGO_PKG_VERSION")));
        let mut session = self
            .step(
                "DESCRIBE",
                retina::client::Session::describe(spec.url.clone(), opts),
            )
            .await?;
        let found: Vec<String> = session
            .streams()
            .iter()
            .map(|s| format!("{}/{}", s.media(), s.encoding_name()))
            .collect();
        let index = session
            .streams()
            .iter()
            .position(|s| s.media() == "video" && matches!(s.encoding_name(), "h264" | "h265"))
            .ok_or_else(|| {
                End::Failed(format!(
                    "unsupported codec: no H.264 or H.265 video in the camera's SDP (found: {})",
                    if found.is_empty() {
                        "nothing".to_owned()
                    } else {
                        found.join(", ")
                    }
                ))
            })?;
        let transport = match spec.transport {
            Transport::Tcp => retina::client::Transport::Tcp(Default::default()),
            Transport::Udp => retina::client::Transport::Udp(Default::default()),
        };
        let setup = SetupOptions::default()
            .transport(transport)
            .frame_format(FrameFormat::MP4);
        self.step("SETUP", session.setup(index, setup)).await?;
        let playing = self
            .step("PLAY", session.play(PlayOptions::default()))
            .await?;
        let mut demuxed = playing
            .demuxed()
            .map_err(|e| End::Failed(format!("PLAY: {e}")))?;

        let cam = spec.camera_id.as_str();
        let kind = spec.kind;
        let mut params: Option<Arc<VideoParams>> = None;
        let mut mapper = WallMapper::new(5_000);
        let mut rates = Rates::default();
        let mut last_frame = Instant::now();
        loop {
            let stall_at = last_frame + spec.stall_timeout;
            let item = tokio::select! {
                biased;
                _ = self.ctx.shutdown.cancelled() => return Err(End::Shutdown),
                _ = tokio::time::sleep_until(stall_at) => {
                    return Err(End::Failed(format!(
                        "stalled: no frame for {}s although the connection is open",
                        spec.stall_timeout.as_secs()
                    )));
                }
                item = demuxed.next() => item,
            };
            let frame = match item {
                None => return Err(End::Failed("the camera ended the session".into())),
                Some(Err(e)) => return Err(End::Failed(e.to_string())),
                Some(Ok(CodecItem::VideoFrame(f))) if f.stream_id() == index => f,
                Some(Ok(_)) => continue,
            };
            if params.is_none() || frame.has_new_parameters() {
                let Some(ParametersRef::Video(p)) = demuxed.streams()[index].parameters() else {
                    return Err(End::Failed(
                        "video frame arrived without stream parameters".into(),
                    ));
                };
                let new = Arc::new(convert_params(p).map_err(End::Failed)?);
                if params.is_some() {
                    tracing::info!(params = ?new, "stream parameters changed");
                }
                params = Some(new);
            }
            let params_now = params.clone().expect("set above");
            let now = self.ctx.clock.now();
            let pts = frame.timestamp().timestamp();
            let wall = match mapper.map(pts, now) {
                Mapped::Ok(w) => w,
                Mapped::Reanchored { at, skew_ms } => {
                    tracing::warn!(
                        skew_ms,
                        "camera media clock disagrees with wall time; re-anchored (recordings are not reordered)"
                    );
                    self.ctx.metrics.clock_jump(cam, kind);
                    at
                }
            };
            let out = VideoFrame {
                pts,
                wall,
                is_key: frame.is_random_access_point(),
                loss: u32::from(frame.loss()),
                params: params_now.clone(),
                data: Bytes::from(frame.into_data()),
            };
            last_frame = Instant::now();
            if !self.started {
                self.started = true;
                self.online_since = Some(last_frame);
                tracing::info!(codec = %params_now.codec, width = params_now.width, height = params_now.height, "stream online");
                self.ctx.health.update(cam, kind, now, |h| {
                    h.codec = Some(params_now.rfc6381.clone());
                    h.width = Some(params_now.width);
                    h.height = Some(params_now.height);
                });
                sup.set_state(CameraState::Online, None);
                for s in &self.ctx.sinks {
                    s.on_event(
                        cam,
                        kind,
                        IngestEvent::SessionStarted {
                            at: wall,
                            params: &params_now,
                        },
                    );
                }
            }
            self.ctx
                .metrics
                .frame(cam, kind, out.data.len(), out.loss, wall.as_millis() / 1000);
            if let Some((fps, bps)) = rates.add(last_frame, out.data.len()) {
                self.ctx.health.update(cam, kind, now, |h| {
                    h.fps = Some((fps * 10.0).round() / 10.0);
                    h.bitrate_bps = Some(bps);
                    h.last_frame = Some(wall);
                });
            }
            for s in &self.ctx.sinks {
                s.on_event(cam, kind, IngestEvent::Frame(&out));
            }
        }
    }
}
