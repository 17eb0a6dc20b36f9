//! A real RTSP camera for tests: `tests/fixtures/rtsp_server.py` (GStreamer's RTSP server
//! through python3-gi) as a child process, plus ffprobe/ffmpeg helpers to look at it.
//!
//! ```no_run
//! use xueliang_tests::rtsp::*;
//! let cam = RtspServer::start(&RtspOptions::default().gop(25).auth("admin", "secret"));
//! let url = cam.url_with_credentials(); // rtsp://admin:secret@127.0.0.1:PORT/cam
//! cam.stall(); // the session stays up, no RTP flows
//! cam.resume();
//! ```

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

/// Debian's interpreter: it has `gi`; a pyenv `python3` on PATH usually does not.
pub const PYTHON: &str = "/usr/bin/python3";

/// How long [`RtspServer::start`] waits for the READY line.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The script this module drives.
pub fn script() -> PathBuf {
    crate::repo_root()
        .join("tests")
        .join("fixtures")
        .join("rtsp_server.py")
}

/// Video codec of the test camera.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    H264,
    H265,
    /// Motion JPEG: a codec the recorder does not take, for error-path tests.
    Jpeg,
}

impl Codec {
    /// The script's `--codec` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Codec::H264 => "h264",
            Codec::H265 => "h265",
            Codec::Jpeg => "jpeg",
        }
    }

    /// What ffprobe calls it in `codec_name`.
    pub fn ffprobe_name(self) -> &'static str {
        match self {
            Codec::H264 => "h264",
            Codec::H265 => "hevc",
            Codec::Jpeg => "mjpeg",
        }
    }
}

/// Lower transports the server accepts in SETUP (a refused one gets 461).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transports {
    TcpAndUdp,
    Tcp,
    Udp,
}

impl Transports {
    /// The script's `--transports` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Transports::TcpAndUdp => "tcp,udp",
            Transports::Tcp => "tcp",
            Transports::Udp => "udp",
        }
    }
}

/// How the test camera is set up. Fields are public; the methods set one and return `self`:
/// `RtspOptions::default().codec(Codec::H265).size(320, 240).gop(25)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtspOptions {
    pub codec: Codec,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// Fixed key-frame interval in frames (no scene-cut key frames).
    pub gop: u32,
    /// B-frames between references; 0 keeps the encoder at zero latency.
    pub bframes: u32,
    pub bitrate_kbps: u32,
    /// videotestsrc pattern: `ball` (default) or `snow` (noise, for a high bit rate).
    pub pattern: String,
    /// 0 = any free port (see [`RtspServer::port`]).
    pub port: u16,
    /// Path of the stream, with the leading `/`.
    pub mount: String,
    /// With `password`: require Digest auth; only this user may play.
    pub user: Option<String>,
    pub password: Option<String>,
    pub transports: Transports,
    /// One pipeline shared by all clients (true) or one per client.
    pub shared: bool,
    /// Start stalled: a DESCRIBE then waits (no SDP) until [`RtspServer::resume`].
    pub stalled: bool,
}

impl Default for RtspOptions {
    fn default() -> Self {
        RtspOptions {
            codec: Codec::H264,
            width: 640,
            height: 360,
            fps: 25,
            gop: 50,
            bframes: 0,
            bitrate_kbps: 1000,
            pattern: "ball".to_owned(),
            port: 0,
            mount: "/cam".to_owned(),
            user: None,
            password: None,
            transports: Transports::TcpAndUdp,
            shared: true,
            stalled: false,
        }
    }
}

impl RtspOptions {
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    pub fn size(mut self, width: u32, height: u32) -> Self {
        self.width = width;
        self.height = height;
        self
    }

    pub fn fps(mut self, fps: u32) -> Self {
        self.fps = fps;
        self
    }

    pub fn gop(mut self, gop: u32) -> Self {
        self.gop = gop;
        self
    }

    pub fn bframes(mut self, bframes: u32) -> Self {
        self.bframes = bframes;
        self
    }

    pub fn bitrate_kbps(mut self, kbps: u32) -> Self {
        self.bitrate_kbps = kbps;
        self
    }

    pub fn pattern(mut self, pattern: &str) -> Self {
        self.pattern = pattern.to_owned();
        self
    }

    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    pub fn mount(mut self, mount: &str) -> Self {
        self.mount = if mount.starts_with('/') {
            mount.to_owned()
        } else {
            format!("/{mount}")
        };
        self
    }

    /// Digest auth for exactly this user.
    pub fn auth(mut self, user: &str, password: &str) -> Self {
        self.user = Some(user.to_owned());
        self.password = Some(password.to_owned());
        self
    }

    pub fn transports(mut self, transports: Transports) -> Self {
        self.transports = transports;
        self
    }

    pub fn shared(mut self, shared: bool) -> Self {
        self.shared = shared;
        self
    }

    pub fn stalled(mut self, stalled: bool) -> Self {
        self.stalled = stalled;
        self
    }

    /// The script's command-line arguments.
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "--port".into(),
            self.port.to_string(),
            "--mount".into(),
            self.mount.clone(),
            "--codec".into(),
            self.codec.as_str().into(),
            "--width".into(),
            self.width.to_string(),
            "--height".into(),
            self.height.to_string(),
            "--fps".into(),
            self.fps.to_string(),
            "--gop".into(),
            self.gop.to_string(),
            "--bframes".into(),
            self.bframes.to_string(),
            "--bitrate".into(),
            self.bitrate_kbps.to_string(),
            "--pattern".into(),
            self.pattern.clone(),
            "--transports".into(),
            self.transports.as_str().into(),
            if self.shared {
                "--shared"
            } else {
                "--no-shared"
            }
            .into(),
        ];
        if let (Some(u), Some(p)) = (&self.user, &self.password) {
            a.extend(["--user".into(), u.clone(), "--password".into(), p.clone()]);
        }
        if self.stalled {
            a.push("--stalled".into());
        }
        a
    }
}

/// Why a start failed (the message carries the script's stderr).
#[derive(Debug)]
struct StartError {
    message: String,
    addr_in_use: bool,
}

/// A running `rtsp_server.py`; killed on drop.
#[derive(Debug)]
pub struct RtspServer {
    child: Child,
    opts: RtspOptions,
    port: u16,
    /// The script's stderr lines, across restarts.
    log: Arc<Mutex<Vec<String>>>,
}

impl RtspServer {
    /// Starts the script and waits up to 20 s for its READY line; panics with its stderr
    /// when it fails.
    pub fn start(opts: &RtspOptions) -> RtspServer {
        Self::try_start(opts, Arc::default()).unwrap_or_else(|e| panic!("{}", e.message))
    }

    fn try_start(
        opts: &RtspOptions,
        log: Arc<Mutex<Vec<String>>>,
    ) -> Result<RtspServer, StartError> {
        let mut child = Command::new(PYTHON)
            .arg(script())
            .args(opts.args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {PYTHON} {}: {e}", script().display()));
        let stderr = child.stderr.take().expect("stderr");
        let stdout = child.stdout.take().expect("stdout");
        let stderr_done = Arc::new(AtomicBool::new(false));
        {
            let log = Arc::clone(&log);
            let done = Arc::clone(&stderr_done);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    log.lock().expect("log lock").push(line);
                }
                done.store(true, Ordering::SeqCst);
            });
        }
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });

        let deadline = Instant::now() + READY_TIMEOUT;
        let fail = |child: &mut Child, why: String| {
            let _ = child.kill();
            let status = child.wait().ok();
            // Let the reader take the last lines (the reason is usually the last one).
            let until = Instant::now() + Duration::from_secs(2);
            while !stderr_done.load(Ordering::SeqCst) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(20));
            }
            let text = log.lock().expect("log lock").join("\n");
            StartError {
                addr_in_use: text.contains("already in use"),
                message: format!(
                    "rtsp_server.py {} ({why}; exit {status:?}); stderr:\n{text}",
                    opts.args().join(" ")
                ),
            }
        };
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    let Some(url) = line.strip_prefix("READY ") else {
                        return Err(fail(&mut child, format!("unexpected stdout {line:?}")));
                    };
                    let port = url
                        .strip_prefix("rtsp://")
                        .and_then(|r| r.split_once('/'))
                        .and_then(|(hp, _)| hp.rsplit_once(':'))
                        .and_then(|(_, p)| p.parse().ok())
                        .unwrap_or_else(|| panic!("no port in READY line {line:?}"));
                    return Ok(RtspServer {
                        child,
                        opts: opts.clone(),
                        port,
                        log: Arc::clone(&log),
                    });
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(st)) = child.try_wait() {
                        return Err(fail(&mut child, format!("exited with {st} before READY")));
                    }
                    if Instant::now() >= deadline {
                        return Err(fail(
                            &mut child,
                            format!("no READY line within {READY_TIMEOUT:?}"),
                        ));
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(fail(&mut child, "closed stdout before READY".to_owned()));
                }
            }
        }
    }

    /// `rtsp://127.0.0.1:PORT/MOUNT`, without credentials.
    pub fn url(&self) -> String {
        format!("rtsp://127.0.0.1:{}{}", self.port, self.opts.mount)
    }

    /// [`url`](Self::url) with the configured user and password in it (or without, when
    /// auth is off).
    pub fn url_with_credentials(&self) -> String {
        match (&self.opts.user, &self.opts.password) {
            (Some(u), Some(p)) => self.url_with(u, p),
            _ => self.url(),
        }
    }

    /// [`url`](Self::url) with these credentials in it.
    pub fn url_with(&self, user: &str, password: &str) -> String {
        format!(
            "rtsp://{user}:{password}@127.0.0.1:{}{}",
            self.port, self.opts.mount
        )
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn options(&self) -> &RtspOptions {
        &self.opts
    }

    /// The script's stderr so far (client connects/disconnects, SETUP transports, ...).
    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").join("\n")
    }

    /// How many stderr lines so far contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log
            .lock()
            .expect("log lock")
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits until at least `n` stderr lines contain `needle`; panics with the log.
    pub fn wait_for_log_count(&self, needle: &str, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.log_count(needle) < n {
            assert!(
                Instant::now() < deadline,
                "rtsp_server.py: fewer than {n} lines with {needle:?} after {timeout:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, name: &str) {
        let st = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -{name} {} failed", self.pid());
    }

    /// SIGUSR1, and waits until the script has closed its valve: from then on no new RTP
    /// is sent (a few packets already queued may still arrive) while the RTSP session and
    /// its TCP connection stay up.
    pub fn stall(&self) {
        let n = self.log_count("STALLED (");
        self.signal("USR1");
        self.wait_for_log_count("STALLED (", n + 1, Duration::from_secs(5));
    }

    /// SIGUSR2, and waits until the script has reopened its valve.
    pub fn resume(&self) {
        let n = self.log_count("RESUMED (");
        self.signal("USR2");
        self.wait_for_log_count("RESUMED (", n + 1, Duration::from_secs(5));
    }

    /// SIGKILL and reap: clients see their TCP connections reset/closed.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM; waits up to 10 s for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st;
            }
            if Instant::now() >= deadline {
                self.kill();
                panic!(
                    "rtsp_server.py did not exit on SIGTERM; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server and starts it again with the same options on the same port
    /// (retrying for up to 10 s while the port is still taken).
    pub fn restart(&mut self) {
        self.kill();
        self.log
            .lock()
            .expect("log lock")
            .push("--- restart ---".to_owned());
        let opts = self.opts.clone().port(self.port);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match Self::try_start(&opts, Arc::clone(&self.log)) {
                Ok(new) => {
                    assert_eq!(new.port, self.port, "restart moved the port");
                    // The old child is reaped; swapping drops (kills) nothing alive.
                    let old = std::mem::replace(self, new);
                    drop(old);
                    return;
                }
                Err(e) if e.addr_in_use && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("restart on port {}: {}", self.port, e.message),
            }
        }
    }
}

impl Drop for RtspServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

fn python_check(code: &str) -> bool {
    Command::new(PYTHON)
        .args(["-c", code])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

const GST_CHECK: &str = "import gi\n\
gi.require_version('Gst', '1.0')\n\
gi.require_version('GstRtspServer', '1.0')\n\
from gi.repository import Gst, GstRtspServer\n\
Gst.init(None)\n\
import sys\n\
sys.exit(0 if all(Gst.ElementFactory.find(e) for e in sys.argv[1:]) else 1)\n";

fn gst_has(elements: &str) -> bool {
    python_check(&format!(
        "import sys; sys.argv = ['-', {}]\n{GST_CHECK}",
        elements
            .split_whitespace()
            .map(|e| format!("{e:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// Whether `/usr/bin/python3` can run the H.264 test camera (gi, GstRtspServer, x264enc).
pub fn gst_available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| gst_has("videotestsrc x264enc h264parse valve rtph264pay"))
}

/// Whether the H.265 camera can run too (x265enc from gstreamer1.0-plugins-bad).
pub fn h265_available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| gst_available() && gst_has("x265enc h265parse rtph265pay"))
}

/// A finished command's status and output.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` to completion with piped output; kills it and panics after `timeout`.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let collect = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = collect(Box::new(child.stdout.take().expect("stdout")));
    let err = collect(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} still running after {timeout:?}; stderr:\n{}",
                err.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// `ffprobe -v error ARGS` (20 s limit), successful or not.
pub fn ffprobe(args: &[&str]) -> Output {
    run_with_timeout(
        Command::new("ffprobe").args(["-v", "error"]).args(args),
        Duration::from_secs(20),
    )
}

/// `ffprobe -v error -of json ARGS`, parsed; panics with stderr when it fails.
pub fn ffprobe_json(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["-of", "json"];
    all.extend_from_slice(args);
    let out = ffprobe(&all);
    assert!(
        out.status.success(),
        "ffprobe {} failed ({}); stderr:\n{}",
        args.join(" "),
        out.status,
        out.stderr
    );
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("ffprobe output is not JSON ({e}):\n{}", out.stdout))
}

/// The first video stream of `url` as ffprobe sees it (`-show_streams`).
pub fn probe_video(url: &str, transport: &str) -> serde_json::Value {
    let v = ffprobe_json(&[
        "-rtsp_transport",
        transport,
        "-select_streams",
        "v",
        "-show_streams",
        url,
    ]);
    v["streams"][0].clone()
}

/// A background `ffmpeg -i URL -c copy -f null -` counting the frames it receives
/// (from `-progress`); killed on drop.
#[derive(Debug)]
pub struct FrameCounter {
    child: Child,
    frames: Arc<AtomicU64>,
    stderr: Arc<Mutex<String>>,
}

impl FrameCounter {
    /// Starts reading `url` over `transport` (`tcp` or `udp`).
    pub fn start(url: &str, transport: &str) -> FrameCounter {
        let mut child = Command::new("ffmpeg")
            .args(["-nostdin", "-hide_banner", "-v", "error"])
            .args(["-rtsp_transport", transport, "-i", url])
            .args(["-c", "copy", "-f", "null", "-progress", "pipe:1"])
            .args(["-stats_period", "0.1", "-"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ffmpeg");
        let frames = Arc::new(AtomicU64::new(0));
        let stderr = Arc::new(Mutex::new(String::new()));
        {
            let frames = Arc::clone(&frames);
            let out = child.stdout.take().expect("stdout");
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if let Some(n) = line.strip_prefix("frame=")
                        && let Ok(n) = n.trim().parse()
                    {
                        frames.store(n, Ordering::SeqCst);
                    }
                }
            });
        }
        {
            let stderr = Arc::clone(&stderr);
            let err = child.stderr.take().expect("stderr");
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    let mut s = stderr.lock().expect("stderr lock");
                    s.push_str(&line);
                    s.push('\n');
                }
            });
        }
        FrameCounter {
            child,
            frames,
            stderr,
        }
    }

    /// Frames received so far (as of ffmpeg's last progress report, every 0.1 s while
    /// packets arrive; it reports nothing while none do).
    pub fn frames(&self) -> u64 {
        self.frames.load(Ordering::SeqCst)
    }

    /// ffmpeg's stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr lock").clone()
    }

    /// Whether ffmpeg is still running (for RTSP/TCP: the connection is up).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits until at least `n` frames arrived; panics with ffmpeg's stderr otherwise.
    /// Returns how long it took.
    pub fn wait_frames(&mut self, n: u64, timeout: Duration) -> Duration {
        let start = Instant::now();
        while self.frames() < n {
            assert!(
                start.elapsed() < timeout,
                "ffmpeg saw {} frames, not {n}, within {timeout:?} (running: {}); stderr:\n{}",
                self.frames(),
                self.running(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        start.elapsed()
    }

    /// Waits up to `timeout` for ffmpeg to exit; returns its status if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for FrameCounter {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
