//! The RTSP server: one listener, one task per TCP connection, one player task per playing
//! session. Sessions belong to the connection that created them and end with it (clients keep
//! the connection open for keepalives, TCP and UDP alike).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tracing::Instrument;
use xueliang_core::shutdown::Shutdown;

use crate::auth::DigestAuth;
use crate::play::{Output, Player, RtpStart};
use crate::rtp::PreparedClip;
use crate::rtsp::{self, Item, Request, Response, TransportSpec};
use crate::{Clip, SimCamera, SimError, sdp};

/// What to serve and how.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// `cameras[n - 1]` is served at `/cam/{n}`.
    pub cameras: Vec<SimCamera>,
    /// Digest credentials (realm `xueliang-sim`) required for everything but OPTIONS.
    pub auth: Option<(String, String)>,
    /// A session without a request, interleaved data or (UDP) RTCP report for this long is
    /// ended; announced in the `Session` header as `;timeout=`. Cameras commonly use 60 s
    /// ([`DEFAULT_SESSION_TIMEOUT`]).
    pub session_timeout: Duration,
}

/// The session timeout most cameras announce.
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(60);

/// A bound server; [`SimServer::run`] serves until shutdown.
#[derive(Debug)]
pub struct SimServer {
    listener: TcpListener,
    local: SocketAddr,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    cameras: Vec<Camera>,
    auth: Option<DigestAuth>,
    session_timeout: Duration,
    bound_at: Instant,
}

#[derive(Debug)]
struct Camera {
    cfg: SimCamera,
    main: Arc<PreparedClip>,
    sub: Option<Arc<PreparedClip>>,
}

/// Binds the listener and packetizes every clip once.
pub async fn bind(cfg: ServerConfig) -> Result<SimServer, SimError> {
    // Cameras often share one clip; packetize each distinct clip once.
    let mut prepared: Vec<(Arc<Clip>, Arc<PreparedClip>)> = Vec::new();
    let mut prepare = |clip: &Arc<Clip>| -> Arc<PreparedClip> {
        if let Some((_, p)) = prepared.iter().find(|(c, _)| Arc::ptr_eq(c, clip)) {
            return p.clone();
        }
        let p = Arc::new(PreparedClip::new(clip));
        prepared.push((clip.clone(), p.clone()));
        p
    };
    let mut cameras = Vec::with_capacity(cfg.cameras.len());
    for (i, cam) in cfg.cameras.into_iter().enumerate() {
        for clip in std::iter::once(&cam.main).chain(cam.sub.as_ref()) {
            if clip.units.is_empty() || !clip.units[0].is_key || clip.duration <= 0 {
                return Err(SimError::Camera {
                    camera: i + 1,
                    reason: "a clip must start with a key frame and have a positive duration"
                        .into(),
                });
            }
        }
        cameras.push(Camera {
            main: prepare(&cam.main),
            sub: cam.sub.as_ref().map(&mut prepare),
            cfg: cam,
        });
    }
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| SimError::Bind {
            addr: cfg.listen,
            source,
        })?;
    let local = listener.local_addr().map_err(SimError::LocalAddr)?;
    Ok(SimServer {
        listener,
        local,
        shared: Arc::new(Shared {
            cameras,
            auth: cfg.auth.map(|(u, p)| DigestAuth::new(u, p)),
            session_timeout: cfg.session_timeout,
            bound_at: Instant::now(),
        }),
    })
}

impl SimServer {
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Accepts connections until `shutdown`; then ends every connection and session.
    pub async fn run(self, shutdown: Shutdown) {
        tracing::info!(addr = %self.local, cameras = self.shared.cameras.len(), "camera simulator listening");
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(_) = conns.join_next() => {}
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let shared = self.shared.clone();
                        let span = tracing::info_span!("rtsp_conn", %peer);
                        conns.spawn(serve_conn(shared, stream, peer).instrument(span));
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(err = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        conns.shutdown().await;
        tracing::info!(addr = %self.local, "camera simulator stopped");
    }
}

/// How long one write to a client may take before the connection is given up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(20);

/// Which stream a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StreamRef {
    /// 0-based index into `cameras`.
    camera: usize,
    sub: bool,
}

/// `/cam/{n}[/sub][/trackID=0]` with an optional trailing slash.
fn resolve(shared: &Shared, path: &str) -> Option<(StreamRef, bool)> {
    let mut segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let track = segs.last() == Some(&sdp::TRACK);
    if track {
        segs.pop();
    }
    let (n, sub) = match segs.as_slice() {
        ["cam", n] => (n, false),
        ["cam", n, "sub"] => (n, true),
        _ => return None,
    };
    let n: usize = n.parse().ok()?;
    let cam = shared.cameras.get(n.checked_sub(1)?)?;
    if sub && cam.sub.is_none() {
        return None;
    }
    Some((StreamRef { camera: n - 1, sub }, track))
}

#[derive(Debug)]
struct Session {
    stream: StreamRef,
    /// The stream's URL as the client named it (for RTP-Info).
    url: String,
    transport: SessionTransport,
    start: RtpStart,
    player: Option<JoinHandle<()>>,
    last_seen: Instant,
    /// UDP only: set by the task reading the client's RTCP reports, which count as liveness
    /// (RFC 2326 A.1) for clients that send no RTSP keepalives; consumed at expiry checks.
    rtcp_seen: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(p) = self.player.take() {
            p.abort();
        }
        if let Some((_, reader)) = self.rtcp_seen.take() {
            reader.abort();
        }
    }
}

#[derive(Debug)]
enum SessionTransport {
    Tcp {
        channel: u8,
    },
    Udp {
        rtp: Arc<UdpSocket>,
        /// Sends sender reports; the client's receiver reports arrive here and are not read.
        rtcp: Arc<UdpSocket>,
        dest: SocketAddr,
        rtcp_dest: SocketAddr,
    },
}

struct Conn {
    shared: Arc<Shared>,
    peer: SocketAddr,
    local: SocketAddr,
    tx: mpsc::Sender<Bytes>,
    sessions: HashMap<String, Session>,
    drop_conn: Shutdown,
}

/// Why a connection ended.
#[derive(Debug)]
enum Close {
    Eof,
    Fault,
    Error(String),
}

async fn serve_conn(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    let local = match stream.local_addr() {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(err = %e, "cannot read the connection's local address");
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    // Responses and interleaved RTP share the socket; one writer keeps them whole and ordered.
    let (tx, mut rx) = mpsc::channel::<Bytes>(64);
    let writer_gone = Shutdown::new();
    let gone = writer_gone.clone();
    let writer = tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            // A client that stops reading would otherwise hold its players (and this task)
            // forever once the socket buffer is full.
            match tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(&b)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => break,
            }
        }
        gone.trigger();
    });
    let mut conn = Conn {
        shared,
        peer,
        local,
        tx,
        sessions: HashMap::new(),
        drop_conn: Shutdown::new(),
    };
    tracing::debug!("connection opened");
    let mut buf = BytesMut::with_capacity(4096);
    let close = loop {
        match rtsp::parse(&mut buf) {
            Ok(Some(item)) => {
                conn.touch();
                match item {
                    Item::Request(req) => {
                        if let Err(close) = conn.handle(req).await {
                            break close;
                        }
                    }
                    Item::Interleaved { channel } => {
                        tracing::trace!(channel, "interleaved data from the client");
                    }
                }
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::info!(err = %e, "bad request; closing");
                let _ = conn.tx.send(Response::new(e.status()).encode(None)).await;
                break Close::Error(e.to_string());
            }
        }
        let expiry = conn.next_expiry();
        tokio::select! {
            _ = conn.drop_conn.cancelled() => break Close::Fault,
            _ = writer_gone.cancelled() => break Close::Error("the client stopped reading or went away".into()),
            _ = sleep_until_opt(expiry) => conn.expire(),
            r = rd.read_buf(&mut buf) => match r {
                Ok(0) => break Close::Eof,
                Ok(_) => {}
                Err(e) => break Close::Error(e.to_string()),
            },
        }
    };
    let reason = match &close {
        Close::Eof => "client closed",
        Close::Fault => "drop fault",
        Close::Error(e) => e.as_str(),
    };
    tracing::debug!(reason, sessions = conn.sessions.len(), "connection closed");
    // Dropping the connection state aborts its players, whose queue handles go with them.
    drop(conn);
    if matches!(close, Close::Fault) {
        writer.abort();
    } else {
        // Let the last response (to TEARDOWN, or a 400) reach the client, but do not wait on a
        // client that stopped reading.
        let abort = writer.abort_handle();
        if tokio::time::timeout(Duration::from_secs(1), writer)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn new_session_id() -> String {
    format!("{:016X}", rand::random::<u64>())
}

impl Conn {
    /// Any traffic from the client keeps its sessions alive (interleaved RTCP included).
    fn touch(&mut self) {
        let now = Instant::now();
        for s in self.sessions.values_mut() {
            s.last_seen = now;
        }
    }

    fn next_expiry(&self) -> Option<Instant> {
        self.sessions
            .values()
            .map(|s| s.last_seen + self.shared.session_timeout)
            .min()
    }

    fn expire(&mut self) {
        let now = Instant::now();
        let timeout = self.shared.session_timeout;
        self.sessions.retain(|id, s| {
            if let Some((seen, _)) = &s.rtcp_seen
                && seen.swap(false, Ordering::Relaxed)
            {
                s.last_seen = now;
            }
            let alive = s.last_seen + timeout > now;
            if !alive {
                tracing::info!(session = %id, timeout_s = timeout.as_secs_f64(), "session timed out");
            }
            alive
        });
    }

    /// The lowest even interleaved channel no other session on this connection uses, for a
    /// client that leaves the choice to us.
    fn free_channel(&self, replacing: Option<&str>) -> u8 {
        let used: Vec<u8> = self
            .sessions
            .iter()
            .filter(|(id, _)| Some(id.as_str()) != replacing)
            .filter_map(|(_, s)| match s.transport {
                SessionTransport::Tcp { channel } => Some(channel),
                SessionTransport::Udp { .. } => None,
            })
            .collect();
        (0..=252u8)
            .step_by(2)
            .find(|c| !used.contains(c))
            .unwrap_or(0)
    }

    fn session_header(&self, id: &str) -> String {
        format!(
            "{id};timeout={}",
            self.shared.session_timeout.as_secs().max(1)
        )
    }

    async fn reply(&self, req: &Request, resp: Response) -> Result<(), Close> {
        tracing::debug!(method = %req.method, uri = %req.uri, status = resp.status, "request");
        self.tx
            .send(resp.encode(req.header("CSeq")))
            .await
            .map_err(|_| Close::Error("writer gone".into()))
    }

    fn camera(&self, s: StreamRef) -> &Camera {
        &self.shared.cameras[s.camera]
    }

    /// `Some(response)` when the request must be refused for want of valid credentials.
    fn unauthorized(&self, req: &Request, stream: StreamRef) -> Option<Response> {
        let since_bind = self.shared.bound_at.elapsed();
        let refused = self.camera(stream).cfg.refuses_auth(since_bind);
        let failed = self
            .shared
            .auth
            .as_ref()
            .is_some_and(|a| !a.verify(&req.method, req.header("Authorization")));
        if !refused && !failed {
            return None;
        }
        let challenge = match &self.shared.auth {
            Some(a) => a.challenge(),
            None => DigestAuth::new(String::new(), String::new()).challenge(),
        };
        if refused || req.header("Authorization").is_some() {
            tracing::info!(method = %req.method, refused, "authentication failed");
        } else {
            // The normal first step of Digest: the client asks without credentials.
            tracing::debug!(method = %req.method, "challenging for credentials");
        }
        Some(Response::new(401).header("WWW-Authenticate", challenge))
    }

    async fn handle(&mut self, req: Request) -> Result<(), Close> {
        if req.header("CSeq").is_none() {
            return self.reply(&req, Response::new(400)).await;
        }
        match req.method.as_str() {
            "OPTIONS" => {
                let resp = Response::new(200).header(
                    "Public",
                    "OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER, SET_PARAMETER",
                );
                self.reply(&req, resp).await
            }
            "DESCRIBE" => self.describe(req).await,
            "SETUP" => self.setup(req).await,
            "PLAY" | "TEARDOWN" | "GET_PARAMETER" | "SET_PARAMETER" => self.in_session(req).await,
            "PAUSE" | "ANNOUNCE" | "RECORD" | "REDIRECT" => {
                let resp = Response::new(405).header(
                    "Allow",
                    "OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER, SET_PARAMETER",
                );
                self.reply(&req, resp).await
            }
            _ => self.reply(&req, Response::new(501)).await,
        }
    }

    async fn describe(&mut self, req: Request) -> Result<(), Close> {
        let Some((stream, _)) = req.path().and_then(|p| resolve(&self.shared, p)) else {
            return self.reply(&req, Response::new(404)).await;
        };
        if let Some(resp) = self.unauthorized(&req, stream) {
            return self.reply(&req, resp).await;
        }
        let cam = self.camera(stream);
        if let Some(delay) = cam.cfg.slow_start() {
            tracing::info!(delay_ms = delay.as_millis() as u64, "fault: slow start");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.drop_conn.cancelled() => return Err(Close::Fault),
            }
        }
        let clip = if stream.sub {
            cam.cfg.sub.as_deref().unwrap_or(&cam.cfg.main)
        } else {
            &cam.cfg.main
        };
        let title = format!(
            "Xueliang simulated camera {} ({})",
            stream.camera + 1,
            if stream.sub { "sub" } else { "main" }
        );
        let server_ip: IpAddr = self.local.ip();
        let body = sdp::describe(clip, &title, server_ip, rand::random::<u32>().into());
        let base = format!(
            "{}/",
            req.uri
                .split('?')
                .next()
                .unwrap_or("")
                .trim_end_matches('/')
        );
        let resp = Response::new(200)
            .header("Content-Base", base)
            .body("application/sdp", body);
        self.reply(&req, resp).await
    }

    async fn setup(&mut self, req: Request) -> Result<(), Close> {
        let Some((stream, _)) = req.path().and_then(|p| resolve(&self.shared, p)) else {
            return self.reply(&req, Response::new(404)).await;
        };
        if let Some(resp) = self.unauthorized(&req, stream) {
            return self.reply(&req, resp).await;
        }
        let existing = req.session().map(str::to_owned);
        if let Some(id) = &existing {
            match self.sessions.get(id) {
                None => return self.reply(&req, Response::new(454)).await,
                // One stream per session: a second URL cannot join this aggregate.
                Some(s) if s.stream != stream => {
                    return self.reply(&req, Response::new(459)).await;
                }
                Some(s) if s.player.is_some() => {
                    return self.reply(&req, Response::new(455)).await;
                }
                Some(_) => {}
            }
        }
        let Some(spec) = req.header("Transport").and_then(rtsp::parse_transport) else {
            return self.reply(&req, Response::new(461)).await;
        };
        let start = RtpStart::random();
        let (transport, answer) = match spec {
            TransportSpec::Tcp { channel } => {
                let ch = channel.unwrap_or_else(|| self.free_channel(existing.as_deref()));
                (
                    SessionTransport::Tcp { channel: ch },
                    format!(
                        "RTP/AVP/TCP;unicast;interleaved={ch}-{};ssrc={:08X}",
                        ch + 1,
                        start.ssrc
                    ),
                )
            }
            TransportSpec::Udp {
                rtp_port,
                rtcp_port,
            } => {
                let Some((rtp, rtcp)) = udp_pair(self.local.ip()).await else {
                    tracing::warn!("no free UDP port pair");
                    return self.reply(&req, Response::new(503)).await;
                };
                let ports = (
                    rtp.local_addr().map(|a| a.port()).unwrap_or(0),
                    rtcp.local_addr().map(|a| a.port()).unwrap_or(0),
                );
                // RTP goes to the address the RTSP connection came from, never to a
                // `destination=` the client names (that would make us a traffic reflector).
                let dest = SocketAddr::new(self.peer.ip(), rtp_port);
                (
                    SessionTransport::Udp {
                        rtp: Arc::new(rtp),
                        rtcp: Arc::new(rtcp),
                        dest,
                        rtcp_dest: SocketAddr::new(self.peer.ip(), rtcp_port),
                    },
                    format!(
                        "RTP/AVP;unicast;client_port={rtp_port}-{rtcp_port};server_port={}-{};ssrc={:08X}",
                        ports.0, ports.1, start.ssrc
                    ),
                )
            }
        };
        let id = existing.unwrap_or_else(new_session_id);
        let url = req
            .uri
            .split('?')
            .next()
            .unwrap_or("")
            .trim_end_matches('/')
            .to_owned();
        tracing::info!(session = %id, camera = stream.camera + 1, sub = stream.sub, transport = %answer, "session set up");
        let rtcp_seen = match &transport {
            SessionTransport::Udp { rtcp, .. } => {
                let seen = Arc::new(AtomicBool::new(false));
                let reader = tokio::spawn(watch_rtcp(rtcp.clone(), self.peer.ip(), seen.clone()));
                Some((seen, reader))
            }
            SessionTransport::Tcp { .. } => None,
        };
        let session = Session {
            stream,
            url,
            transport,
            start,
            player: None,
            last_seen: Instant::now(),
            rtcp_seen,
        };
        self.sessions.insert(id.clone(), session);
        let resp = Response::new(200)
            .header("Transport", answer)
            .header("Session", self.session_header(&id));
        self.reply(&req, resp).await
    }

    async fn in_session(&mut self, req: Request) -> Result<(), Close> {
        let Some(id) = req.session().map(str::to_owned) else {
            // A keepalive without a session (some clients ping before SETUP) is harmless.
            if req.method == "GET_PARAMETER" || req.method == "SET_PARAMETER" {
                if let Some(a) = &self.shared.auth
                    && !a.verify(&req.method, req.header("Authorization"))
                {
                    let resp = Response::new(401).header("WWW-Authenticate", a.challenge());
                    return self.reply(&req, resp).await;
                }
                return self.reply(&req, Response::new(200)).await;
            }
            return self.reply(&req, Response::new(454)).await;
        };
        let Some(stream) = self.sessions.get(&id).map(|s| s.stream) else {
            return self.reply(&req, Response::new(454)).await;
        };
        if let Some(resp) = self.unauthorized(&req, stream) {
            return self.reply(&req, resp).await;
        }
        let session_hdr = self.session_header(&id);
        match req.method.as_str() {
            "TEARDOWN" => {
                self.sessions.remove(&id);
                tracing::info!(session = %id, "session torn down");
                self.reply(&req, Response::new(200)).await
            }
            "PLAY" => self.play(req, id, session_hdr).await,
            _ => {
                let resp = Response::new(200).header("Session", session_hdr);
                self.reply(&req, resp).await
            }
        }
    }

    async fn play(&mut self, req: Request, id: String, session_hdr: String) -> Result<(), Close> {
        let shared = self.shared.clone();
        let Some(session) = self.sessions.get_mut(&id) else {
            return self.reply(&req, Response::new(454)).await;
        };
        let camera = &shared.cameras[session.stream.camera];
        let clip = match (&camera.sub, session.stream.sub) {
            (Some(sub), true) => sub.clone(),
            _ => camera.main.clone(),
        };
        let rtp_info = format!(
            "url={}/{};seq={};rtptime={}",
            session.url.trim_end_matches(&format!("/{}", sdp::TRACK)),
            sdp::TRACK,
            session.start.seq,
            session.start.timestamp
        );
        let resp = Response::new(200)
            .header("Session", session_hdr)
            .header("Range", "npt=0.000-")
            .header("RTP-Info", rtp_info);
        if session.player.is_some() {
            // Already playing: a repeated PLAY changes nothing.
            return self.reply(&req, resp).await;
        }
        let out = match &session.transport {
            SessionTransport::Tcp { channel } => Output::Tcp {
                tx: self.tx.clone(),
                channel: *channel,
            },
            SessionTransport::Udp {
                rtp,
                rtcp,
                dest,
                rtcp_dest,
            } => Output::Udp {
                socket: rtp.clone(),
                dest: *dest,
                rtcp: rtcp.clone(),
                rtcp_dest: *rtcp_dest,
            },
        };
        let player = Player {
            clip,
            out,
            start: session.start,
            faults: camera.cfg.faults.clone(),
            drop_conn: self.drop_conn.clone(),
            session: id.clone(),
        };
        // The response goes into the writer queue before the first RTP packet can.
        self.reply(&req, resp).await?;
        tracing::info!(session = %id, "playing");
        let span = tracing::Span::current();
        if let Some(session) = self.sessions.get_mut(&id) {
            session.player = Some(tokio::spawn(player.run().instrument(span)));
        }
        Ok(())
    }
}

/// Flags every RTCP packet the client sends to the session's RTCP port (from its own address).
async fn watch_rtcp(socket: Arc<UdpSocket>, client: IpAddr, seen: Arc<AtomicBool>) {
    let mut buf = [0u8; 1500];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((n, from)) if n >= 8 && from.ip() == client && buf[0] >> 6 == 2 => {
                seen.store(true, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(e) => {
                // ICMP errors from our own sender reports surface here; keep listening.
                tracing::trace!(err = %e, "RTCP receive failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// An even RTP port and the next one for RTCP (RFC 3550 11), on the address the client reached.
async fn udp_pair(ip: IpAddr) -> Option<(UdpSocket, UdpSocket)> {
    for _ in 0..32 {
        let Ok(rtp) = UdpSocket::bind((ip, 0)).await else {
            continue;
        };
        let Ok(port) = rtp.local_addr().map(|a| a.port()) else {
            continue;
        };
        if port % 2 != 0 || port == u16::MAX {
            continue;
        }
        if let Ok(rtcp) = UdpSocket::bind((ip, port + 1)).await {
            return Some((rtp, rtcp));
        }
    }
    None
}
