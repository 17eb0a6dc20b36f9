//! Test helpers: clips encoded by the ffmpeg CLI, a server on a loopback port, and a raw RTSP
//! client that records every interleaved RTP packet it sees.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OnceCell;
use tokio::time::Instant;
use xueliang_core::media::VideoCodec;
use xueliang_core::shutdown::Shutdown;
use xueliang_sim::{Clip, Fault, ServerConfig, SimCamera, bind, clip_from_annex_b};

/// A 1 s clip (25 frames at 25 fps, one GOP), so 3 s of reading crosses two loop boundaries.
pub async fn clip(codec: VideoCodec, width: u32, height: u32) -> Arc<Clip> {
    type Cache = std::sync::Mutex<Vec<((VideoCodec, u32, u32), Arc<Clip>)>>;
    static CACHE: OnceCell<Cache> = OnceCell::const_new();
    let cache = CACHE
        .get_or_init(|| async { std::sync::Mutex::new(Vec::new()) })
        .await;
    if let Some((_, c)) = cache
        .lock()
        .unwrap()
        .iter()
        .find(|(k, _)| *k == (codec, width, height))
    {
        return c.clone();
    }
    let dir = tempfile::tempdir().unwrap();
    let out: PathBuf = dir.path().join("clip.es");
    let src = format!("testsrc2=size={width}x{height}:rate=25");
    let mut cmd = tokio::process::Command::new("ffmpeg");
    cmd.args(["-v", "error", "-y", "-f", "lavfi", "-i", &src, "-t", "1"]);
    match codec {
        VideoCodec::H264 => cmd.args(["-c:v", "libx264", "-g", "25", "-bf", "0", "-f", "h264"]),
        VideoCodec::H265 => cmd.args([
            "-c:v",
            "libx265",
            "-x265-params",
            "keyint=25:bframes=0:log-level=error",
            "-f",
            "hevc",
        ]),
    };
    cmd.args(["-pix_fmt", "yuv420p"]).arg(&out);
    let status = cmd.status().await.expect("run ffmpeg");
    assert!(status.success(), "ffmpeg failed to encode the test clip");
    let data = tokio::fs::read(&out).await.unwrap();
    let clip = Arc::new(clip_from_annex_b(codec, &data, 25).expect("parse the clip"));
    cache
        .lock()
        .unwrap()
        .push(((codec, width, height), clip.clone()));
    clip
}

pub struct Running {
    pub addr: SocketAddr,
    pub shutdown: Shutdown,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    pub fn url(&self, path: &str) -> String {
        format!("rtsp://{}{}", self.addr, path)
    }

    pub fn url_with(&self, user: &str, pass: &str, path: &str) -> String {
        format!("rtsp://{user}:{pass}@{}{}", self.addr, path)
    }

    pub async fn stop(self) {
        self.shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("server stops within 5 s")
            .unwrap();
    }
}

pub async fn serve(cameras: Vec<SimCamera>, auth: Option<(&str, &str)>) -> Running {
    serve_with_timeout(cameras, auth, xueliang_sim::DEFAULT_SESSION_TIMEOUT).await
}

pub async fn serve_with_timeout(
    cameras: Vec<SimCamera>,
    auth: Option<(&str, &str)>,
    session_timeout: Duration,
) -> Running {
    let server = bind(ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        cameras,
        auth: auth.map(|(u, p)| (u.to_owned(), p.to_owned())),
        session_timeout,
    })
    .await
    .unwrap();
    let addr = server.local_addr();
    let shutdown = Shutdown::new();
    let task = tokio::spawn(server.run(shutdown.clone()));
    Running {
        addr,
        shutdown,
        task,
    }
}

pub fn camera(main: Arc<Clip>, faults: Vec<Fault>) -> SimCamera {
    SimCamera {
        main,
        sub: None,
        faults,
    }
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }

    pub fn session(&self) -> String {
        self.header("Session")
            .expect("Session header")
            .split(';')
            .next()
            .unwrap()
            .to_owned()
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Rtp {
    pub at: Instant,
    pub channel: u8,
    pub seq: u16,
    pub ts: u32,
    pub ssrc: u32,
    pub marker: bool,
}

/// A minimal RTSP client over one TCP connection.
pub struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
    cseq: u32,
    pub rtp: Vec<Rtp>,
    /// Payload types of the RTCP packets received (200 = sender report).
    pub rtcp: Vec<u8>,
    pub eof: bool,
}

enum Frame {
    Rtp(Rtp),
    Resp(Resp),
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        Raw {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
            cseq: 0,
            rtp: Vec::new(),
            rtcp: Vec::new(),
            eof: false,
        }
    }

    /// The socket, for tests that read it themselves (buffered bytes are discarded).
    pub fn into_stream(self) -> TcpStream {
        self.stream
    }

    pub async fn send_raw(&mut self, data: &[u8]) {
        self.stream.write_all(data).await.unwrap();
    }

    /// Sends a request and waits (up to 10 s) for its response, recording RTP meanwhile.
    pub async fn request(&mut self, method: &str, uri: &str, headers: &[(&str, &str)]) -> Resp {
        self.cseq += 1;
        let mut req = format!("{method} {uri} RTSP/1.0\r\nCSeq: {}\r\n", self.cseq);
        for (n, v) in headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        req.push_str("\r\n");
        self.send_raw(req.as_bytes()).await;
        let r = self.response().await;
        assert_eq!(
            r.header("CSeq").as_deref(),
            Some(self.cseq.to_string().as_str()),
            "CSeq echoed: {r:?}"
        );
        r
    }

    /// Waits (up to 10 s) for the next response, recording RTP meanwhile.
    pub async fn response(&mut self) -> Resp {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.next_frame(deadline).await {
                Some(Frame::Resp(r)) => return r,
                Some(Frame::Rtp(p)) => self.rtp.push(p),
                None => panic!("no response (eof: {})", self.eof),
            }
        }
    }

    /// Reads RTP until `d` has passed or the server closes the connection.
    pub async fn read_for(&mut self, d: Duration) {
        let deadline = Instant::now() + d;
        while let Some(f) = self.next_frame(deadline).await {
            match f {
                Frame::Rtp(p) => self.rtp.push(p),
                Frame::Resp(r) => panic!("unexpected response {r:?}"),
            }
        }
    }

    async fn next_frame(&mut self, deadline: Instant) -> Option<Frame> {
        loop {
            if let Some(f) = self.take_frame() {
                return Some(f);
            }
            if self.eof {
                return None;
            }
            self.buf.reserve(16384);
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return None,
                Ok(Ok(0)) | Ok(Err(_)) => {
                    self.eof = true;
                    return None;
                }
                Ok(Ok(_)) => {}
            }
        }
    }

    fn take_frame(&mut self) -> Option<Frame> {
        if self.buf.first() == Some(&b'$') {
            if self.buf.len() < 4 {
                return None;
            }
            let len = usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]]));
            if self.buf.len() < 4 + len {
                return None;
            }
            let p = &self.buf[4..4 + len];
            assert!(len >= 8 && p[0] >> 6 == 2, "RTP/RTCP version 2");
            if self.buf[1] % 2 == 1 {
                // RTCP on the odd channel: keep the packet types.
                self.rtcp.push(p[1]);
                self.buf.drain(..4 + len);
                return self.take_frame();
            }
            assert!(len >= 12, "RTP header");
            let rtp = Rtp {
                at: Instant::now(),
                channel: self.buf[1],
                marker: p[1] & 0x80 != 0,
                seq: u16::from_be_bytes([p[2], p[3]]),
                ts: u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
                ssrc: u32::from_be_bytes([p[8], p[9], p[10], p[11]]),
            };
            self.buf.drain(..4 + len);
            return Some(Frame::Rtp(rtp));
        }
        let end = self.buf.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = String::from_utf8(self.buf[..end].to_vec()).unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case("Content-Length")
                    .then(|| v.trim().parse().unwrap())
            })
            .unwrap_or(0);
        if self.buf.len() < end + 4 + len {
            return None;
        }
        let body = String::from_utf8(self.buf[end + 4..end + 4 + len].to_vec()).unwrap();
        self.buf.drain(..end + 4 + len);
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status code");
        Some(Frame::Resp(Resp { status, head, body }))
    }

    /// DESCRIBE, SETUP (TCP interleaved 0-1) and PLAY; returns the session id.
    pub async fn play_tcp(&mut self, url: &str) -> String {
        let r = self
            .request("DESCRIBE", url, &[("Accept", "application/sdp")])
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        let base = r.header("Content-Base").expect("Content-Base");
        let track = format!("{base}trackID=0");
        let r = self
            .request(
                "SETUP",
                &track,
                &[("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1")],
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        let session = r.session();
        let r = self.request("PLAY", &base, &[("Session", &session)]).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.header("RTP-Info").is_some_and(|i| i.contains("seq=")));
        session
    }

    /// Access units (marker bits) seen.
    pub fn frames(&self) -> usize {
        self.rtp.iter().filter(|p| p.marker).count()
    }
}
