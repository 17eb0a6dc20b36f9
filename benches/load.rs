//! Recording load: N simulated 1080p 4 Mb/s H.264 cameras recorded by the release `xueliang`
//! binary, and the same N streams recorded by N `ffmpeg -c copy -f segment` processes (what
//! Frigate runs per camera), measured over the same fixed window in one run.
//!
//! ```text
//! cargo bench -p xueliang-benches --bench load                      # 16 and 64 streams, 30 s
//! cargo bench -p xueliang-benches --bench load -- --streams 16,64,256 --seconds 60
//! bash deploy/load-bench.sh                                          # builds, then the same
//! ```
//!
//! Options (after `--`):
//! * `--streams 16,64,256`  stream counts, one xueliang and one ffmpeg run each (default 16,64)
//! * `--seconds S`          measurement window per run (default 30)
//! * `--warmup S`           settling time once every stream is recording (default 5)
//! * `--no-ffmpeg`          record with xueliang only; `--ffmpeg-max N` runs ffmpeg only for
//!   stream counts up to N (256 ffmpeg processes overload a 2-core box for minutes)
//! * `--no-build`           do not run `cargo build --release -p xueliang --bin xueliang` first;
//!   `XUELIANG_BIN=/path/xueliang` (or `--bin PATH`) uses that binary instead
//!
//! Per run it reports, from `/proc`: CPU (utime + stime) as % of one core per stream, VmRSS and
//! PSS (`smaps_rollup`) per stream (peak over the window), write throughput and dropped frames.
//! xueliang's bytes, frames and drops come from its `/metrics` (`xueliang_record_*`); ffmpeg has
//! no drop counter, so its row shows frames written against real time instead (over TCP a
//! recorder that cannot keep up falls behind rather than losing packets). The
//! `xueliang/ffmpeg` row divides CPU per stream, and PSS per stream for memory: ffmpeg's
//! RSS counts the shared libav libraries once per process, PSS splits them among the processes.
//!
//! The simulator (`xueliang_sim`) runs in its own process (this binary re-executed with
//! `--serve-sim PORT N CLIP`), so its CPU is measured apart and not charged to either recorder.
//! The clip is encoded once by the ffmpeg CLI and cached under `target/load-bench/`; recordings
//! go to a temporary directory there too (on the build disk, not a tmpfs) and are removed after
//! each run. The table is printed as markdown and written as JSON to `target/load-bench.json`.

#![allow(clippy::print_stdout, reason = "the report is this program's output")]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use xueliang_benches::{target_dir, xueliang_bin};

use xueliang_core::media::VideoCodec;
use xueliang_core::shutdown::Shutdown;
use xueliang_sim::{DEFAULT_SESSION_TIMEOUT, ServerConfig, SimCamera, bind, clip_from_annex_b};

type Error = Box<dyn std::error::Error + Send + Sync>;
type Result<T, E = Error> = std::result::Result<T, E>;

const FPS: u32 = 25;
/// Clip length: six 2 s GOPs, long enough that every stream is not one repeating picture.
const CLIP_SECONDS: u32 = 12;
const TOKEN: &str = "load-bench-admin-token-0123456789abcdef";
/// The goals from the issue.
const GOAL_CPU_RATIO: f64 = 0.25;
const GOAL_RSS_MIB: f64 = 2.0;
const GOAL_BOX_PCT: f64 = 50.0;

const USAGE: &str = "usage: load [--streams 16,64,256] [--seconds S] [--warmup S] \
                     [--no-ffmpeg] [--ffmpeg-max N] [--no-build] [--bin PATH]";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = if args.first().map(String::as_str) == Some("--serve-sim") {
        serve_sim(&args[1..])
    } else {
        Opts::parse(&args).and_then(run)
    };
    if let Err(e) = outcome {
        eprintln!("load: {e}");
        std::process::exit(1);
    }
}

#[derive(Debug, Clone)]
struct Opts {
    streams: Vec<usize>,
    seconds: u64,
    warmup: u64,
    ffmpeg_max: usize,
    build: bool,
    bin: Option<PathBuf>,
}

impl Opts {
    fn parse(args: &[String]) -> Result<Opts> {
        let mut o = Opts {
            streams: vec![16, 64],
            seconds: 30,
            warmup: 5,
            ffmpeg_max: usize::MAX,
            build: true,
            bin: std::env::var_os("XUELIANG_BIN").map(PathBuf::from),
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = || {
                it.next()
                    .cloned()
                    .ok_or_else(|| format!("{a} needs a value; {USAGE}"))
            };
            match a.as_str() {
                // cargo passes `--bench` to harness-less bench targets.
                "--bench" => {}
                "--streams" => {
                    o.streams = value()?
                        .split(',')
                        .map(|s| s.trim().parse::<usize>())
                        .collect::<Result<_, _>>()
                        .map_err(|e| format!("--streams: {e}; {USAGE}"))?;
                }
                "--seconds" => o.seconds = value()?.parse()?,
                "--warmup" => o.warmup = value()?.parse()?,
                "--no-ffmpeg" => o.ffmpeg_max = 0,
                "--ffmpeg-max" => o.ffmpeg_max = value()?.parse()?,
                "--no-build" => o.build = false,
                "--bin" => o.bin = Some(value()?.into()),
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => return Err(format!("unknown argument {other:?}; {USAGE}").into()),
            }
        }
        if o.streams.is_empty() || o.streams.contains(&0) || o.seconds == 0 {
            return Err(format!("need positive stream counts and seconds; {USAGE}").into());
        }
        Ok(o)
    }
}

// ---------------------------------------------------------------------------------------------
// Paths, clip, binaries

/// The Annex B clip every simulated camera serves, encoded once and cached: 1920x1080, 25 fps,
/// ~4 Mb/s, no B-frames, a key frame every 2 s with SPS/PPS before each.
///
/// This is the one place that knows how the clip is made, so the ffmpeg CLI can be swapped for
/// the project's own scene encoder without touching the rest.
fn load_clip() -> Result<PathBuf> {
    let dir = target_dir().join("load-bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("clip-1080p{FPS}-4M-g50-{CLIP_SECONDS}s.h264"));
    if std::fs::metadata(&path).is_ok_and(|m| m.len() > 0) {
        return Ok(path);
    }
    eprintln!(
        "load: encoding the {CLIP_SECONDS} s 1080p clip with ffmpeg (once; cached as {})",
        path.display()
    );
    let partial = path.with_extension("h264.partial");
    let src = format!("testsrc2=size=1920x1080:rate={FPS}");
    let t = CLIP_SECONDS.to_string();
    let st = Command::new("ffmpeg")
        .args([
            "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", &src, "-t", &t,
        ])
        .args([
            "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
        ])
        .args(["-b:v", "4M", "-maxrate", "4M", "-bufsize", "8M"])
        .args([
            "-g",
            "50",
            "-keyint_min",
            "50",
            "-sc_threshold",
            "0",
            "-bf",
            "0",
        ])
        .args(["-x264-params", "repeat-headers=1", "-f", "h264"])
        .arg(&partial)
        .status()
        .map_err(|e| format!("run ffmpeg (is it installed?): {e}"))?;
    if !st.success() {
        return Err(format!("ffmpeg failed to encode the clip ({st})").into());
    }
    std::fs::rename(&partial, &path)?;
    Ok(path)
}

// ---------------------------------------------------------------------------------------------
// The simulator process

/// Child side of `--serve-sim PORT N CLIP`: serves N cameras of the clip on 127.0.0.1:PORT
/// (0 picks one), prints `listening PORT`, and runs until its stdin closes (the parent exited or
/// dropped it), so it never outlives the benchmark.
fn serve_sim(args: &[String]) -> Result<()> {
    let [port, n, clip] = args else {
        return Err("usage: --serve-sim PORT N CLIP".into());
    };
    let port: u16 = port.parse()?;
    let n: usize = n.parse()?;
    let data = std::fs::read(clip)?;
    let clip = Arc::new(clip_from_annex_b(VideoCodec::H264, &data, FPS)?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let server = bind(ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
            cameras: (0..n)
                .map(|_| SimCamera {
                    main: clip.clone(),
                    sub: None,
                    faults: Vec::new(),
                })
                .collect(),
            auth: None,
            session_timeout: DEFAULT_SESSION_TIMEOUT,
        })
        .await?;
        let mut out = std::io::stdout();
        writeln!(out, "listening {}", server.local_addr().port())?;
        out.flush()?;
        let shutdown = Shutdown::new();
        let stop = shutdown.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while matches!(std::io::stdin().read(&mut buf), Ok(k) if k > 0) {}
            stop.trigger();
        });
        server.run(shutdown).await;
        Ok::<(), Error>(())
    })
}

/// A child process that is terminated (SIGTERM, then SIGKILL) when dropped, so an error or
/// panic anywhere in the benchmark leaves nothing running.
#[derive(Debug)]
struct Proc {
    child: Child,
    name: String,
}

impl Proc {
    fn spawn(cmd: &mut Command, name: impl Into<String>) -> Result<Proc> {
        let name = name.into();
        let child = cmd.spawn().map_err(|e| format!("start {name}: {e}"))?;
        Ok(Proc { child, name })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends SIGTERM without waiting.
    fn term(&mut self) {
        if self.exited().is_none() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.pid().to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }

    /// Waits up to `grace` for exit, then kills; `Err` when it had to be killed.
    fn reap(&mut self, grace: Duration) -> Result<ExitStatus, String> {
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(st) = self.exited() {
                return Ok(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        Err(format!(
            "{} ignored SIGTERM for {grace:?}; killed",
            self.name
        ))
    }

    fn stop(&mut self, grace: Duration) -> Result<ExitStatus, String> {
        self.term();
        self.reap(grace)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited().is_none()
            && let Err(e) = self.stop(Duration::from_secs(5))
        {
            eprintln!("load: {e}");
        }
    }
}

struct Sim {
    proc: Proc,
    port: u16,
}

fn start_sim(cameras: usize, clip: &Path) -> Result<Sim> {
    let exe = std::env::current_exe()?;
    let mut proc = Proc::spawn(
        Command::new(exe)
            .args(["--serve-sim", "0", &cameras.to_string()])
            .arg(clip)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit()),
        "simulator",
    )?;
    let stdout = proc.child.stdout.take().ok_or("simulator stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let port = line
        .trim()
        .strip_prefix("listening ")
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("simulator did not start (said {line:?})"))?;
    Ok(Sim { proc, port })
}

// ---------------------------------------------------------------------------------------------
// /proc

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of a process (all its threads) in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn kib_field(path: &str, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(path).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn rss_kib(pid: u32) -> Option<u64> {
    kib_field(&format!("/proc/{pid}/status"), "VmRSS:")
}

fn pss_kib(pid: u32) -> Option<u64> {
    kib_field(&format!("/proc/{pid}/smaps_rollup"), "Pss:")
}

/// (busy, total) jiffies of the whole machine from /proc/stat.
fn box_ticks() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = s
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    // idle and iowait
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// What one measurement window saw.
#[derive(Debug, Default, Clone)]
struct Window {
    secs: f64,
    /// Recorder CPU seconds (all its processes).
    cpu_s: f64,
    /// Peak of the summed VmRSS / PSS over the samples, KiB.
    rss_kib: u64,
    pss_kib: Option<u64>,
    sim_cpu_s: f64,
    /// Whole machine busy share, 0..1 of all cores.
    box_busy: f64,
    /// Recorder processes that exited during the window (their CPU is then undercounted).
    exited: usize,
}

/// Measures `pids` for `seconds`, sampling memory every `every`.
fn measure(pids: &[u32], sim: u32, seconds: u64, every: Duration, tck: f64) -> Window {
    let sum_cpu = |pids: &[u32]| pids.iter().filter_map(|&p| cpu_ticks(p)).sum::<u64>();
    let mut rss = 0u64;
    let mut pss: Option<u64> = None;
    let mut sample_mem = || {
        rss = rss.max(pids.iter().filter_map(|&p| rss_kib(p)).sum());
        let p: Option<u64> = pids.iter().map(|&p| pss_kib(p)).sum();
        if let Some(p) = p {
            pss = Some(pss.map_or(p, |q| q.max(p)));
        }
    };
    let (b0, t0) = box_ticks();
    let c0 = sum_cpu(pids);
    let s0 = cpu_ticks(sim).unwrap_or(0);
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    sample_mem();
    while Instant::now() < end {
        std::thread::sleep(every.min(end.saturating_duration_since(Instant::now())));
        sample_mem();
    }
    let alive = pids.iter().filter(|&&p| cpu_ticks(p).is_some()).count();
    let c1 = sum_cpu(pids);
    let s1 = cpu_ticks(sim).unwrap_or(0);
    let (b1, t1) = box_ticks();
    Window {
        secs: start.elapsed().as_secs_f64(),
        cpu_s: c1.saturating_sub(c0) as f64 / tck,
        rss_kib: rss,
        pss_kib: pss,
        sim_cpu_s: s1.saturating_sub(s0) as f64 / tck,
        box_busy: (b1 - b0) as f64 / (t1 - t0).max(1) as f64,
        exited: pids.len() - alive,
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP and metrics

fn http_get(addr: SocketAddr, path: &str, token: Option<&str>) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no HTTP header end")?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("no HTTP status")?;
    let mut body = raw[end + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut s: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = s.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&s[..eol])
            .ok()
            .and_then(|h| usize::from_str_radix(h.trim(), 16).ok())
            .unwrap_or(0);
        let start = eol + 2;
        if size == 0 || start + size > s.len() {
            break;
        }
        out.extend_from_slice(&s[start..start + size]);
        s = &s[(start + size + 2).min(s.len())..];
    }
    out
}

/// The counters this benchmark reads from `/metrics`, summed over cameras.
#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    online: usize,
    bytes: f64,
    frames: f64,
    dropped: f64,
    rtp_loss: f64,
    reconnects: f64,
}

fn counters(addr: SocketAddr) -> Result<Counters> {
    let (status, text) = http_get(addr, "/metrics", Some(TOKEN))?;
    if status != 200 {
        return Err(format!("/metrics answered {status}").into());
    }
    let mut c = Counters::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.parse::<f64>() else {
            continue;
        };
        let name = series.split('{').next().unwrap_or_default();
        match name {
            "xueliang_camera_state"
                if series.contains("state=\"online\"")
                    && series.contains("stream=\"main\"")
                    && v == 1.0 =>
            {
                c.online += 1
            }
            "xueliang_record_bytes_total" => c.bytes += v,
            "xueliang_record_frames_total" => c.frames += v,
            "xueliang_record_dropped_frames_total" => c.dropped += v,
            "xueliang_camera_rtp_loss_total" => c.rtp_loss += v,
            "xueliang_camera_reconnects_total" => c.reconnects += v,
            _ => {}
        }
    }
    Ok(c)
}

// ---------------------------------------------------------------------------------------------
// The two recorders

/// One recorder's figures for one stream count.
#[derive(Debug, Clone)]
struct Run {
    streams: usize,
    recorder: &'static str,
    w: Window,
    /// Bytes written during the window.
    bytes: f64,
    /// Dropped frames during the window (None: the recorder does not count them).
    dropped: Option<f64>,
    /// Frames written / frames the cameras sent in real time.
    realtime: Option<f64>,
    /// Anything worth a footnote: reconnects, RTP loss, exits, log errors.
    notes: Vec<String>,
}

impl Run {
    fn cpu_pct_per_stream(&self) -> f64 {
        100.0 * self.w.cpu_s / self.w.secs / self.streams as f64
    }
    fn rss_mib_per_stream(&self) -> f64 {
        self.w.rss_kib as f64 / 1024.0 / self.streams as f64
    }
    fn pss_mib_per_stream(&self) -> Option<f64> {
        self.w
            .pss_kib
            .map(|p| p as f64 / 1024.0 / self.streams as f64)
    }
    fn write_mb_s(&self) -> f64 {
        self.bytes / self.w.secs / 1e6
    }
    /// The recorder's CPU as % of all cores of the box.
    fn box_pct(&self) -> f64 {
        100.0 * self.w.cpu_s / self.w.secs / cores() as f64
    }
    fn sim_pct(&self) -> f64 {
        100.0 * self.w.sim_cpu_s / self.w.secs
    }
}

fn free_loopback_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn xueliang_config(dir: &Path, n: usize, sim_port: u16) -> Result<String> {
    // Nothing listens on this port: the MQTT client retries in the background, which is the
    // idle cost of a node whose broker is down, and keeps every address on loopback.
    let mqtt_port = free_loopback_port()?;
    let data = dir.display().to_string();
    let rec = dir.join("recordings").display().to_string();
    let mut s = format!(
        r#"[node]
id = "load-bench"
data_dir = {data:?}
shutdown_timeout_seconds = 20

[mqtt]
mode = "external"
url = "mqtt://127.0.0.1:{mqtt_port}"

[api]
listen = "127.0.0.1:0"

[[api.tokens]]
name = "bench"
token = "{TOKEN}"
role = "admin"

[storage]
dir = {rec:?}
segment_seconds = 60
rpo_seconds = 2
min_free_bytes = "1 GiB"
"#
    );
    for i in 1..=n {
        s.push_str(&format!(
            "\n[[cameras]]\nid = \"cam-{i:03}\"\nurl = \"rtsp://127.0.0.1:{sim_port}/cam/{i}\"\n\
             transport = \"tcp\"\nrecord = true\nmotion = {{ enabled = false }}\n"
        ));
    }
    Ok(s)
}

/// Log lines of the running service, drained by threads so its pipes never fill.
struct Logs {
    rx: mpsc::Receiver<String>,
    /// WARN and ERROR lines, the last few kept for the report.
    problems: Arc<Mutex<(usize, VecDeque<String>)>>,
}

fn collect_logs(child: &mut Child) -> Logs {
    let (tx, rx) = mpsc::channel();
    let problems = Arc::new(Mutex::new((0usize, VecDeque::new())));
    let streams: Vec<Box<dyn Read + Send>> = [
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .collect();
    for stream in streams {
        let tx = tx.clone();
        let problems = problems.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if line.contains("\"level\":\"WARN\"") || line.contains("\"level\":\"ERROR\"") {
                    let mut p = problems.lock().expect("log lock");
                    p.0 += 1;
                    if p.1.len() == 5 {
                        p.1.pop_front();
                    }
                    p.1.push_back(line.clone());
                }
                // The receiver only wants the first lines; later sends may fail, keep draining.
                let _ = tx.send(line);
            }
        });
    }
    Logs { rx, problems }
}

fn run_xueliang(bin: &Path, work: &Path, n: usize, sim: &Sim, o: &Opts, tck: f64) -> Result<Run> {
    let dir = tempfile::Builder::new()
        .prefix("xueliang-")
        .tempdir_in(work)?;
    let cfg = dir.path().join("node.toml");
    std::fs::write(&cfg, xueliang_config(dir.path(), n, sim.port)?)?;
    let check = Command::new(bin)
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()?;
    if !check.status.success() {
        return Err(format!(
            "xueliang check-config rejected the benchmark config:\n{}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        )
        .into());
    }
    let mut svc = Proc::spawn(
        Command::new(bin)
            .args(["run", "--config"])
            .arg(&cfg)
            .env("XUELIANG_LOG_FORMAT", "json")
            .env("XUELIANG_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
        "xueliang",
    )?;
    let logs = collect_logs(&mut svc.child);
    let addr = wait_api(&mut svc, &logs)?;
    let online_by = Instant::now() + Duration::from_secs(60 + n as u64 / 4);
    loop {
        let c = counters(addr)?;
        if c.online == n {
            break;
        }
        if let Some(st) = svc.exited() {
            return Err(format!("xueliang exited ({st}) before all cameras were online").into());
        }
        if Instant::now() > online_by {
            return Err(format!("only {} of {n} cameras online after waiting", c.online).into());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "load: xueliang: {n} cameras online; warming up {} s",
        o.warmup
    );
    std::thread::sleep(Duration::from_secs(o.warmup));
    let m0 = counters(addr)?;
    let w = measure(
        &[svc.pid()],
        sim.proc.pid(),
        o.seconds,
        Duration::from_secs(1),
        tck,
    );
    let m1 = counters(addr)?;
    let mut notes = Vec::new();
    if m1.online != n {
        notes.push(format!("{} of {n} online at the end", m1.online));
    }
    if m1.reconnects > m0.reconnects {
        notes.push(format!("{} reconnects", m1.reconnects - m0.reconnects));
    }
    if m1.rtp_loss > m0.rtp_loss {
        notes.push(format!("{} RTP packets lost", m1.rtp_loss - m0.rtp_loss));
    }
    match svc.stop(Duration::from_secs(30)) {
        Ok(st) if st.success() => {}
        Ok(st) => notes.push(format!("exit status {st} after SIGTERM")),
        Err(e) => notes.push(e),
    }
    let (count, last) = logs.problems.lock().expect("log lock").clone();
    if count > 0 {
        notes.push(format!(
            "{count} WARN/ERROR log lines, last: {}",
            last.back().map_or("", String::as_str)
        ));
    }
    let expected = n as f64 * f64::from(FPS) * w.secs;
    Ok(Run {
        streams: n,
        recorder: "xueliang",
        bytes: m1.bytes - m0.bytes,
        dropped: Some(m1.dropped - m0.dropped),
        realtime: Some((m1.frames - m0.frames) / expected),
        notes,
        w,
    })
}

/// Waits for the "api listening" log line and returns its address.
fn wait_api(svc: &mut Proc, logs: &Logs) -> Result<SocketAddr> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        match logs.rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) if line.contains("api listening") => {
                let v: serde_json::Value = serde_json::from_str(&line)?;
                let addr = v["addr"]
                    .as_str()
                    .or_else(|| v["fields"]["addr"].as_str())
                    .ok_or_else(|| format!("no addr in {line}"))?;
                return Ok(addr.parse()?);
            }
            Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if let Some(st) = svc.exited() {
            let (_, last) = logs.problems.lock().expect("log lock").clone();
            return Err(format!("xueliang exited ({st}) at start: {last:?}").into());
        }
    }
    Err("xueliang did not log \"api listening\" within 60 s".into())
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// `nb_frames` of every `out*.mp4` in `dir`, from the moov box (cheap: nothing is decoded).
fn mp4_frames(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut total = 0;
    for e in rd.filter_map(Result::ok) {
        let p = e.path();
        if p.extension().is_none_or(|x| x != "mp4") {
            continue;
        }
        let out = Command::new("ffprobe")
            .args(["-v", "error", "-select_streams", "v:0"])
            .args(["-show_entries", "stream=nb_frames", "-of", "csv=p=0"])
            .arg(&p)
            .output();
        if let Ok(o) = out {
            total += String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<u64>()
                .unwrap_or(0);
        }
    }
    total
}

fn run_ffmpeg(work: &Path, n: usize, sim: &Sim, o: &Opts, tck: f64) -> Result<Run> {
    let root = tempfile::Builder::new()
        .prefix("ffmpeg-")
        .tempdir_in(work)?;
    let mut procs: Vec<(Proc, PathBuf)> = Vec::with_capacity(n);
    for i in 1..=n {
        let dir = root.path().join(format!("cam-{i:03}"));
        std::fs::create_dir(&dir)?;
        let log = std::fs::File::create(dir.join("ffmpeg.log"))?;
        let url = format!("rtsp://127.0.0.1:{}/cam/{i}", sim.port);
        // The recording command from the issue, verbatim, after Frigate's own global options
        // (no banner, warnings only: the progress line is not part of the work measured).
        let p = Proc::spawn(
            Command::new("ffmpeg")
                .current_dir(&dir)
                .args(["-hide_banner", "-loglevel", "warning"])
                .args(["-rtsp_transport", "tcp", "-i", &url, "-c", "copy"])
                .args([
                    "-f",
                    "segment",
                    "-segment_time",
                    "60",
                    "-reset_timestamps",
                    "1",
                ])
                .arg("out%03d.mp4")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log),
            format!("ffmpeg cam {i}"),
        )?;
        procs.push((p, dir));
        // Spread the RTSP handshakes a little, as a real start-up would.
        std::thread::sleep(Duration::from_millis(10));
    }
    // Recording once the first segment file has data; remember when, for the real-time check.
    let mut first: Vec<Option<Instant>> = vec![None; n];
    let ready_by = Instant::now() + Duration::from_secs(60 + n as u64 / 2);
    while first.iter().any(Option::is_none) {
        for (i, (p, dir)) in procs.iter_mut().enumerate() {
            if first[i].is_none() {
                if std::fs::metadata(dir.join("out000.mp4")).is_ok_and(|m| m.len() > 0) {
                    first[i] = Some(Instant::now());
                } else if let Some(st) = p.exited() {
                    let log = std::fs::read_to_string(dir.join("ffmpeg.log")).unwrap_or_default();
                    return Err(format!("{} exited ({st}) before recording: {log}", p.name).into());
                }
            }
        }
        if Instant::now() > ready_by {
            let ready = first.iter().flatten().count();
            return Err(format!("only {ready} of {n} ffmpeg processes recording").into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "load: ffmpeg: {n} processes recording; warming up {} s",
        o.warmup
    );
    std::thread::sleep(Duration::from_secs(o.warmup));
    let pids: Vec<u32> = procs.iter().map(|(p, _)| p.pid()).collect();
    let size = |procs: &[(Proc, PathBuf)]| -> u64 { procs.iter().map(|(_, d)| dir_bytes(d)).sum() };
    let b0 = size(&procs);
    // Memory of hundreds of processes: sample less often so the sampling stays cheap.
    let every = Duration::from_secs(if n > 64 { 5 } else { 1 });
    let w = measure(&pids, sim.proc.pid(), o.seconds, every, tck);
    let b1 = size(&procs);
    let stop_at = Instant::now();
    for (p, _) in &mut procs {
        p.term();
    }
    // ffmpeg exits with 255 after a clean stop on a signal; only a kill counts as unclean.
    let mut bad = 0;
    for (p, _) in &mut procs {
        if p.reap(Duration::from_secs(20)).is_err() {
            bad += 1;
        }
    }
    // SIGTERM makes ffmpeg write the moov, so frames can be counted from the files.
    let frames: u64 = procs.iter().map(|(_, d)| mp4_frames(d)).sum();
    let expected: f64 = first
        .iter()
        .flatten()
        .map(|t| stop_at.duration_since(*t).as_secs_f64() * f64::from(FPS))
        .sum();
    let mut notes = Vec::new();
    if w.exited > 0 {
        notes.push(format!("{} processes exited during the window", w.exited));
    }
    if bad > 0 {
        notes.push(format!("{bad} processes ignored SIGTERM and were killed"));
    }
    let warned = procs
        .iter()
        .filter(|(_, d)| std::fs::metadata(d.join("ffmpeg.log")).is_ok_and(|m| m.len() > 0))
        .count();
    if warned > 0 {
        let sample = procs
            .iter()
            .map(|(_, d)| std::fs::read_to_string(d.join("ffmpeg.log")).unwrap_or_default())
            .find(|s| !s.is_empty())
            .unwrap_or_default();
        notes.push(format!(
            "{warned} processes logged warnings, e.g. {:?}",
            sample.lines().next().unwrap_or_default()
        ));
    }
    Ok(Run {
        streams: n,
        recorder: "ffmpeg",
        bytes: b1.saturating_sub(b0) as f64,
        dropped: None,
        realtime: (expected > 0.0).then(|| frames as f64 / expected),
        notes,
        w,
    })
}

// ---------------------------------------------------------------------------------------------
// The report

fn run(o: Opts) -> Result<()> {
    let clip_path = load_clip()?;
    let data = std::fs::read(&clip_path)?;
    let clip = clip_from_annex_b(VideoCodec::H264, &data, FPS)?;
    let clip_secs = clip.duration as f64 / 90_000.0;
    let clip_mbps = data.len() as f64 * 8.0 / clip_secs / 1e6;
    let keys = clip.units.iter().filter(|u| u.is_key).count();
    eprintln!(
        "load: clip {}x{} {} fps, {:.1} s, {keys} key frames, {clip_mbps:.2} Mb/s",
        clip.width, clip.height, clip.fps, clip_secs
    );
    drop(clip);
    let bin = xueliang_bin(o.bin.as_deref(), o.build)?;
    let tck = clk_tck();
    let work = target_dir().join("load-bench");
    let max_n = o.streams.iter().copied().max().unwrap_or(1);
    // One simulator for every run: it serves max_n cameras; a run with n streams uses 1..=n.
    let mut sim = start_sim(max_n, &clip_path)?;
    let mut runs = Vec::new();
    for &n in &o.streams {
        eprintln!("load: {n} streams, {} s window: xueliang", o.seconds);
        runs.push(run_xueliang(&bin, &work, n, &sim, &o, tck)?);
        // Let the simulator end the previous sessions before the next recorder connects.
        std::thread::sleep(Duration::from_secs(2));
        if n <= o.ffmpeg_max {
            eprintln!("load: {n} streams, {} s window: ffmpeg", o.seconds);
            runs.push(run_ffmpeg(&work, n, &sim, &o, tck)?);
            std::thread::sleep(Duration::from_secs(2));
        }
        if let Some(st) = sim.proc.exited() {
            return Err(format!("the simulator exited ({st})").into());
        }
    }
    let _ = sim.proc.stop(Duration::from_secs(10));
    report(&o, clip_mbps, &runs)
}

fn fmt_opt(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("{v:.prec$}"))
}

fn report(o: &Opts, clip_mbps: f64, runs: &[Run]) -> Result<()> {
    let ncores = cores();
    let mut md = String::new();
    md.push_str(&format!(
        "\nRecording load, {} s windows, 1080p25 H.264 at {clip_mbps:.2} Mb/s per stream, \
         {ncores} cores\n\n",
        o.seconds
    ));
    md.push_str(
        "| streams | recorder | CPU % of one core per stream | RSS MiB per stream | \
         PSS MiB per stream | write MB/s | dropped frames | frames vs real time |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut json_runs = Vec::new();
    let mut ratios = Vec::new();
    for r in runs {
        md.push_str(&format!(
            "| {} | {} | {:.3} | {:.2} | {} | {:.1} | {} | {} |\n",
            r.streams,
            r.recorder,
            r.cpu_pct_per_stream(),
            r.rss_mib_per_stream(),
            fmt_opt(r.pss_mib_per_stream(), 2),
            r.write_mb_s(),
            fmt_opt(r.dropped, 0),
            r.realtime
                .map_or_else(|| "–".to_owned(), |x| format!("{:.1}%", 100.0 * x)),
        ));
        json_runs.push(serde_json::json!({
            "streams": r.streams,
            "recorder": r.recorder,
            "window_seconds": r.w.secs,
            "cpu_seconds": r.w.cpu_s,
            "cpu_pct_of_one_core_per_stream": r.cpu_pct_per_stream(),
            "cpu_pct_of_box": r.box_pct(),
            "rss_mib_per_stream": r.rss_mib_per_stream(),
            "pss_mib_per_stream": r.pss_mib_per_stream(),
            "rss_mib_total": r.w.rss_kib as f64 / 1024.0,
            "write_mb_per_s": r.write_mb_s(),
            "expected_mb_per_s": r.streams as f64 * clip_mbps / 8.0,
            "dropped_frames": r.dropped,
            "frames_vs_real_time": r.realtime,
            "sim_cpu_pct_of_one_core": r.sim_pct(),
            "box_busy_pct": 100.0 * r.w.box_busy,
            "notes": r.notes,
        }));
        if r.recorder == "ffmpeg"
            && let Some(x) = runs
                .iter()
                .find(|x| x.recorder == "xueliang" && x.streams == r.streams)
        {
            let cpu = x.cpu_pct_per_stream() / r.cpu_pct_per_stream();
            // PSS on both sides when readable: ffmpeg's RSS counts libav once per process.
            let (mem, basis) = match (x.pss_mib_per_stream(), r.pss_mib_per_stream()) {
                (Some(a), Some(b)) => (a / b, "PSS"),
                _ => (x.rss_mib_per_stream() / r.rss_mib_per_stream(), "RSS"),
            };
            md.push_str(&format!(
                "| {} | **xueliang/ffmpeg** | **{cpu:.3}** | {} {mem:.3} | | {:.2} | | |\n",
                r.streams,
                basis,
                x.write_mb_s() / r.write_mb_s(),
            ));
            ratios.push(serde_json::json!({
                "streams": r.streams,
                "cpu_per_stream": cpu,
                "memory_per_stream": mem,
                "memory_basis": basis,
            }));
        }
    }
    md.push_str(&format!(
        "\nExpected write rate: {:.2} MB/s per stream. Dropped frames: \
         xueliang_record_dropped_frames_total over the window (ffmpeg has no such counter; \
         its frames vs real time counts the frames in its files from the first file to SIGTERM). \
         The ratio row's memory uses PSS on both sides where readable.\n\n",
        clip_mbps / 8.0
    ));
    md.push_str("| streams | recorder | recorder % of the box | simulator % of one core | whole box busy % |\n|---:|---|---:|---:|---:|\n");
    for r in runs {
        md.push_str(&format!(
            "| {} | {} | {:.1} | {:.1} | {:.1} |\n",
            r.streams,
            r.recorder,
            r.box_pct(),
            r.sim_pct(),
            100.0 * r.w.box_busy
        ));
    }
    let notes: Vec<String> = runs
        .iter()
        .flat_map(|r| {
            r.notes
                .iter()
                .map(move |n| format!("* {} {}: {n}", r.streams, r.recorder))
        })
        .collect();
    // Fixed costs (runtime, SQLite, HTTP) spread thin at high stream counts; the slope between
    // the smallest and largest runs is what one more stream costs.
    let xs: Vec<&Run> = runs.iter().filter(|r| r.recorder == "xueliang").collect();
    let mut marginal = serde_json::Value::Null;
    if let (Some(a), Some(b)) = (
        xs.iter().min_by_key(|r| r.streams),
        xs.iter().max_by_key(|r| r.streams),
    ) && b.streams > a.streams
    {
        let dn = (b.streams - a.streams) as f64;
        let rss = (b.w.rss_kib as f64 - a.w.rss_kib as f64) / 1024.0 / dn;
        let cpu = 100.0 * (b.w.cpu_s / b.w.secs - a.w.cpu_s / a.w.secs) / dn;
        md.push_str(&format!(
            "\nxueliang per additional stream ({} -> {} streams): {cpu:.3}% of one core, \
             {rss:.2} MiB RSS\n",
            a.streams, b.streams
        ));
        marginal = serde_json::json!({
            "from_streams": a.streams,
            "to_streams": b.streams,
            "cpu_pct_of_one_core": cpu,
            "rss_mib": rss,
        });
    }
    if !notes.is_empty() {
        md.push_str("\nNotes:\n");
        md.push_str(&notes.join("\n"));
        md.push('\n');
    }
    // The goals, checked against the largest stream count measured.
    let mut goals = Vec::new();
    if let Some(x) = runs.iter().rev().find(|r| r.recorder == "xueliang") {
        let cpu_ratio = ratios
            .iter()
            .rev()
            .find_map(|r| r["cpu_per_stream"].as_f64());
        let ok = |b: bool| if b { "met" } else { "NOT met" };
        goals.push(format!(
            "* CPU per stream <= 1/4 of ffmpeg's: {}",
            cpu_ratio.map_or("not measured (no ffmpeg run)".to_owned(), |c| format!(
                "{c:.3} at the largest ffmpeg run, {}",
                ok(c <= GOAL_CPU_RATIO)
            ))
        ));
        goals.push(format!(
            "* RSS <= {GOAL_RSS_MIB} MiB per stream: {:.2} MiB at {} streams, {}",
            x.rss_mib_per_stream(),
            x.streams,
            ok(x.rss_mib_per_stream() <= GOAL_RSS_MIB)
        ));
        goals.push(format!(
            "* {} streams under {GOAL_BOX_PCT}% of the box with no drops: {:.1}% of {ncores} \
             cores, {} dropped, {} ({})",
            x.streams,
            x.box_pct(),
            fmt_opt(x.dropped, 0),
            ok(x.box_pct() < GOAL_BOX_PCT && x.dropped == Some(0.0)),
            if x.streams >= 256 {
                "the goal's stream count"
            } else {
                "the goal is stated for 256 streams"
            }
        ));
        md.push_str("\nGoals:\n");
        md.push_str(&goals.join("\n"));
        md.push('\n');
    }
    println!("{md}");
    let json = serde_json::json!({
        "clip": { "width": 1920, "height": 1080, "fps": FPS, "mbps": clip_mbps },
        "cores": ncores,
        "window_seconds": o.seconds,
        "runs": json_runs,
        "ratios": ratios,
        "xueliang_marginal_per_stream": marginal,
        "goals": goals,
    });
    let path = target_dir().join("load-bench.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    eprintln!("load: wrote {}", path.display());
    Ok(())
}
