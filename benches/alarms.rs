//! Alarm path latency and throughput: panic-button press → committed → delivered on the
//! Server-Sent Events stream (`GET /api/v1/events`) of the release `xueliang` binary, on SQLite
//! and on PostgreSQL, against the raw Mosquitto publish → subscribe latency of the same broker
//! in the same run (the floor).
//!
//! ```text
//! cargo build --release -p xueliang --bin xueliang     # the bench runs this itself first
//! cargo bench -p xueliang-benches --bench alarms
//! cargo bench -p xueliang-benches --bench alarms -- --backends sqlite --seconds 20 --burst 50000
//! ```
//!
//! Options (after `--`):
//! * `--backends sqlite,postgres` which stores to run (default both; PostgreSQL is the server at
//!   `XUELIANG_TEST_PG_URL`, default `postgres://postgres@127.0.0.1:5432/postgres`, trust auth;
//!   a fresh database is created for the run and dropped after it)
//! * `--rates 100,1000`       paced press rates (presses/s) for the latency runs
//! * `--seconds S`            length of each paced run (default 10)
//! * `--devices N`            configured panic buttons the presses are spread over (default 1000)
//! * `--burst N`              presses in the throughput burst (default 20000)
//! * `--publishers P`         MQTT connections the presses are published over (default 4)
//! * `--inflight N`           Mosquitto `max_inflight_messages` (default 1000)
//! * `--nodelay`            Mosquitto `set_tcp_nodelay true` (default off, as Mosquitto ships)
//! * `--log FILTER`           the service's `XUELIANG_LOG` (default: unset, i.e. `info`)
//! * `--no-build`             skip `cargo build --release -p xueliang --bin xueliang`;
//!   `XUELIANG_BIN=/path/xueliang` (or `--bin PATH`) uses that binary instead
//!
//! Per backend the bench starts a Mosquitto of its own on a free loopback port
//! (`max_queued_messages 100000`), then:
//! 1. **floor**: one QoS 1 publisher and one QoS 1 subscriber client, `rate × seconds` messages
//!    paced at each rate; latency from handing the message to the publisher's client to the
//!    subscriber receiving it (the send time travels in the payload);
//! 2. **fsync**: 200 × (4 KiB write + `fdatasync`) in the run directory (same disk as SQLite);
//! 3. starts `xueliang run` (`mqtt.mode = "external"`, `devices` panic buttons plus one for the
//!    readiness press, admin token, API on a free port, service log in the run directory),
//!    opens the SSE stream, and presses at each rate; every press is a distinct
//!    `(device, seq)`, round-robin over the devices, each device always on the same publisher
//!    connection (so its presses reach the broker in order);
//! 4. **burst**: `--burst` presses handed to the publishers as fast as they take them.
//!
//! Attribution: an SSE `alarm` event names no press, but its incident's `signal_count` grows by
//! exactly the presses the commit added to it (`after.signal_count` for `type = new`,
//! `after.signal_count - before.signal_count` otherwise). So per device the presses still
//! waiting form a FIFO, and an event for that device with growth `d` completes its `d` oldest
//! presses. Presses join the device's open incident (join window 120 s), so a device's later
//! presses show up as `update` events; escalations and other updates add no signals and
//! complete nothing. Latency runs from handing the press to the MQTT client to reading the
//! event off the socket. `handler` is the part up to the service's batch timestamp
//! (`after.updated_at`, wall clock, ms precision): MQTT delivery and queueing before the two
//! transactions; the rest is the commits and the stream.
//!
//! Max presses/s: burst size over the time from its first press to the service's
//! `xueliang_mqtt_messages_total{kind="alarm"}` (`/metrics`, polled every 20 ms) counting all of
//! them (stored: the signals' transaction committed), and to the SSE stream accounting for all
//! of them. `offered/s` is how fast the broker acknowledged the burst's publishes: when it is
//! close to the service's figure the load generator, not the service, is the limit. CPU per
//! process over the burst is read from `/proc` (% of one core).
//!
//! Goals (from the issue): p99 ≤ 3 × floor p99 (same rate) + one fsync (p99 of the fsync
//! probe); ≥ 5,000 presses/s sustained on SQLite. The table is printed as markdown and written
//! as JSON to `target/alarm-bench.json`.

#![allow(clippy::print_stdout, reason = "the report is this program's output")]

use std::collections::VecDeque;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use xueliang_benches::{
    Broker, Summary, cpu_seconds, parse_backends, postgres_cpu_seconds, summarize, target_dir,
    xueliang_bin,
};

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use xueliang_core::{Clock, SystemClock};
use xueliang_store::testing::TestDb;

type Error = Box<dyn std::error::Error + Send + Sync>;
type Result<T, E = Error> = std::result::Result<T, E>;

const TOKEN: &str = "alarm-bench-admin-token-0123456789abcdef";
const GOAL_PRESSES_PER_SEC: f64 = 5000.0;
const GOAL_FLOOR_FACTOR: f64 = 3.0;
/// How long presses may take to show up on the stream before they count as lost.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

static ORIGIN: OnceLock<Instant> = OnceLock::new();

fn origin() -> Instant {
    *ORIGIN.get_or_init(Instant::now)
}

#[derive(Clone, Debug)]
struct Opts {
    backends: Vec<String>,
    rates: Vec<u32>,
    seconds: u32,
    devices: usize,
    burst: usize,
    publishers: usize,
    inflight: u32,
    nodelay: bool,
    log: Option<String>,
    build: bool,
    bin: Option<PathBuf>,
}

impl Opts {
    fn parse() -> Result<Opts> {
        let mut o = Opts {
            backends: vec!["sqlite".into(), "postgres".into()],
            rates: vec![100, 1000],
            seconds: 10,
            devices: 1000,
            burst: 20_000,
            publishers: 4,
            inflight: 1000,
            nodelay: false,
            log: None,
            build: true,
            bin: std::env::var_os("XUELIANG_BIN").map(PathBuf::from),
        };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            let mut value = || args.next().ok_or_else(|| format!("{a} needs a value"));
            match a.as_str() {
                // cargo passes `--bench` to harness-less bench targets.
                "--bench" => {}
                "--backends" => o.backends = parse_backends(&value()?)?,
                "--rates" => {
                    o.rates = value()?
                        .split(',')
                        .map(str::parse)
                        .collect::<Result<_, _>>()?;
                }
                "--seconds" => o.seconds = value()?.parse()?,
                "--devices" => o.devices = value()?.parse()?,
                "--burst" => o.burst = value()?.parse()?,
                "--publishers" => o.publishers = value()?.parse::<usize>()?.max(1),
                "--inflight" => o.inflight = value()?.parse()?,
                "--nodelay" => o.nodelay = true,
                "--log" => o.log = Some(value()?),
                "--no-build" => o.build = false,
                "--bin" => o.bin = Some(value()?.into()),
                other => return Err(format!("unknown option {other:?}").into()),
            }
        }
        if o.devices == 0 || o.rates.contains(&0) {
            return Err("--devices and --rates must be positive".into());
        }
        Ok(o)
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `xueliang run`, output to a log file; terminated on [`Service::stop`], killed on drop.
struct Service {
    child: Child,
    api: SocketAddr,
}

impl Service {
    fn start(
        bin: &Path,
        config: &Path,
        log: &Path,
        filter: Option<&str>,
        api: SocketAddr,
    ) -> Result<Service> {
        let out = std::fs::File::create(log)?;
        let mut cmd = Command::new(bin);
        cmd.args(["run", "--config"])
            .arg(config)
            .env("XUELIANG_LOG_FORMAT", "json")
            .env_remove("XUELIANG_LOG")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        if let Some(f) = filter {
            cmd.env("XUELIANG_LOG", f);
        }
        let child = cmd.spawn()?;
        Ok(Service { child, api })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// SIGTERM, then SIGKILL after 15 s.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if self.exited() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `fdatasync` latency of 4 KiB appends in `dir`.
fn fsync_probe(dir: &Path) -> Result<Summary> {
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path)?;
    let block = vec![0x5a_u8; 4096];
    let mut v = Vec::with_capacity(200);
    for _ in 0..200 {
        f.write_all(&block)?;
        let t = Instant::now();
        f.sync_data()?;
        v.push(t.elapsed().as_secs_f64() * 1e3);
    }
    drop(f);
    let _ = std::fs::remove_file(&path);
    Ok(summarize(v))
}

/// Runs an MQTT event loop until aborted, handing every event to `f`; reconnects after errors.
fn spawn_loop(
    mut el: EventLoop,
    mut f: impl FnMut(Event) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                Ok(ev) => f(ev),
                Err(e) => {
                    eprintln!("alarms: mqtt connection error: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    })
}

/// A QoS 1 client for publishing: pipelined (large in-flight window and request queue); counts
/// PUBACKs. Returns once connected.
async fn publisher(
    port: u16,
    id: &str,
    pubacks: Arc<AtomicU64>,
) -> Result<(AsyncClient, tokio::task::JoinHandle<()>)> {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_clean_session(true)
        .set_keep_alive(Duration::from_secs(30))
        .set_inflight(u16::MAX)
        .set_request_channel_capacity(100_000);
    let (client, el) = AsyncClient::new(o, 100_000);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut tx = Some(tx);
    let task = spawn_loop(el, move |ev| match ev {
        Event::Incoming(Packet::ConnAck(_)) => {
            if let Some(t) = tx.take() {
                let _ = t.send(());
            }
        }
        Event::Incoming(Packet::PubAck(_)) => {
            pubacks.fetch_add(1, Ordering::Relaxed);
        }
        _ => {}
    });
    tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .map_err(|_| format!("publisher {id} did not connect"))??;
    Ok((client, task))
}

/// Raw Mosquitto publish → subscribe latency at `rate` messages/s for `seconds`.
async fn floor(port: u16, rate: u32, seconds: u32) -> Result<Summary> {
    let n = (rate * seconds) as usize;
    let samples = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let mut o = MqttOptions::new(format!("bench-floor-sub-{rate}"), "127.0.0.1", port);
    o.set_clean_session(true)
        .set_keep_alive(Duration::from_secs(30));
    let (sub, el) = AsyncClient::new(o, 1000);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut tx = Some(tx);
    let s2 = samples.clone();
    let sub_task = spawn_loop(el, move |ev| match ev {
        Event::Incoming(Packet::SubAck(_)) => {
            if let Some(t) = tx.take() {
                let _ = t.send(());
            }
        }
        Event::Incoming(Packet::Publish(p)) => {
            let now = origin().elapsed().as_nanos() as u64;
            if let Some(b) = p.payload.get(..8) {
                let sent = u64::from_le_bytes(b.try_into().unwrap_or_default());
                s2.lock()
                    .expect("samples")
                    .push(now.saturating_sub(sent) as f64 / 1e6);
            }
        }
        _ => {}
    });
    sub.subscribe("bench/floor", QoS::AtLeastOnce).await?;
    tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .map_err(|_| "floor subscriber did not subscribe")??;
    let (publ, pub_task) = publisher(
        port,
        &format!("bench-floor-pub-{rate}"),
        Arc::new(AtomicU64::new(0)),
    )
    .await?;
    // Warm-up messages (connection start, first allocations) are not measured.
    let warmup = (rate as usize / 10).clamp(10, 100);
    let gap = Duration::from_secs_f64(1.0 / f64::from(rate));
    for (round, count) in [(0, warmup), (1, n)] {
        if round == 1 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            samples.lock().expect("samples").clear();
        }
        let start = tokio::time::Instant::now();
        for i in 0..count {
            tokio::time::sleep_until(start + gap * i as u32).await;
            // About the size of a press: the send time, then padding.
            let mut payload = vec![b' '; 110];
            let sent = origin().elapsed().as_nanos() as u64;
            payload[..8].copy_from_slice(&sent.to_le_bytes());
            publ.publish("bench/floor", QoS::AtLeastOnce, false, payload)
                .await?;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while samples.lock().expect("samples").len() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let v = std::mem::take(&mut *samples.lock().expect("samples"));
    if v.len() < n {
        eprintln!(
            "alarms: floor at {rate}/s: {} of {n} messages arrived",
            v.len()
        );
    }
    let _ = publ.disconnect().await;
    let _ = sub.disconnect().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    sub_task.abort();
    pub_task.abort();
    Ok(summarize(v))
}

/// Presses waiting for the stream, per device, and what the stream completed.
#[derive(Default)]
struct Tracker {
    /// Per device: (handed to MQTT, wall clock ms at that moment) of presses not yet seen.
    pending: Vec<VecDeque<(Instant, i64)>>,
    waiting: usize,
    e2e_ms: Vec<f64>,
    handler_ms: Vec<f64>,
    /// Signal growth on the stream that matched no press we sent.
    unmatched: u64,
    events: u64,
    last_match: Option<Instant>,
}

impl Tracker {
    fn sent(&mut self, device: usize, at: Instant, wall_ms: i64) {
        self.pending[device].push_back((at, wall_ms));
        self.waiting += 1;
    }

    /// One `alarm` event: its device's `growth` oldest presses are complete.
    fn event(&mut self, device: usize, growth: i64, updated_ms: Option<i64>, now: Instant) {
        self.events += 1;
        for _ in 0..growth.max(0) {
            match self.pending.get_mut(device).and_then(VecDeque::pop_front) {
                Some((sent, wall)) => {
                    self.waiting -= 1;
                    self.e2e_ms
                        .push(now.duration_since(sent).as_secs_f64() * 1e3);
                    if let Some(u) = updated_ms {
                        self.handler_ms.push((u - wall) as f64);
                    }
                    self.last_match = Some(now);
                }
                None => self.unmatched += 1,
            }
        }
    }

    fn take(&mut self) -> (Vec<f64>, Vec<f64>) {
        (
            std::mem::take(&mut self.e2e_ms),
            std::mem::take(&mut self.handler_ms),
        )
    }
}

fn device_id(i: usize) -> String {
    format!("bench-{i:05}")
}

fn device_index(id: &str) -> Option<usize> {
    id.strip_prefix("bench-")?.parse().ok()
}

/// Reads `GET /api/v1/events` and feeds the tracker. Resolves once the stream is open.
async fn open_stream(
    api: SocketAddr,
    tracker: Arc<Mutex<Tracker>>,
) -> Result<tokio::task::JoinHandle<()>> {
    let mut s = TcpStream::connect(api).await?;
    s.set_nodelay(true)?;
    let req = format!(
        "GET /api/v1/events HTTP/1.1\r\nHost: {api}\r\nAuthorization: Bearer {TOKEN}\r\n\
         Accept: text/event-stream\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(1 << 16);
    let head_end = loop {
        let mut chunk = [0u8; 8192];
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err("event stream closed before its headers".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!(
            "event stream refused: {}",
            head.lines().next().unwrap_or("")
        )
        .into());
    }
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    buf.drain(..head_end + 4);
    Ok(tokio::spawn(async move {
        let mut raw = buf;
        let mut text = String::new();
        let mut chunk = vec![0u8; 1 << 16];
        loop {
            // Body bytes so far, de-chunked.
            if chunked {
                while let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") {
                    let size = std::str::from_utf8(&raw[..eol])
                        .ok()
                        .and_then(|h| usize::from_str_radix(h.trim(), 16).ok())
                        .unwrap_or(0);
                    if raw.len() < eol + 2 + size + 2 {
                        break;
                    }
                    text.push_str(&String::from_utf8_lossy(&raw[eol + 2..eol + 2 + size]));
                    raw.drain(..eol + 2 + size + 2);
                }
            } else {
                text.push_str(&String::from_utf8_lossy(&raw));
                raw.clear();
            }
            let now = Instant::now();
            while let Some(end) = text.find("\n\n") {
                let ev: String = text.drain(..end + 2).collect();
                handle_sse(&ev, &tracker, now);
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    eprintln!("alarms: the event stream closed");
                    return;
                }
                Ok(n) => raw.extend_from_slice(&chunk[..n]),
            }
        }
    }))
}

fn handle_sse(ev: &str, tracker: &Mutex<Tracker>, now: Instant) {
    let mut kind = "message";
    let mut data = String::new();
    for line in ev.lines() {
        if let Some(v) = line.strip_prefix("event:") {
            kind = v.trim();
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push_str(v.strip_prefix(' ').unwrap_or(v));
        }
    }
    if kind != "alarm" {
        return;
    }
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&data) else {
        return;
    };
    let after = &v["after"];
    let Some(device) = after["source_id"].as_str().and_then(device_index) else {
        return;
    };
    let count = |x: &serde_json::Value| x["signal_count"].as_i64().unwrap_or(0);
    let growth = count(after) - count(&v["before"]);
    let updated = after["updated_at"]
        .as_str()
        .and_then(|t| xueliang_core::Timestamp::parse_rfc3339(t).ok())
        .map(|t| t.as_millis());
    tracker
        .lock()
        .expect("tracker")
        .event(device, growth, updated, now);
}

/// `GET path` over a fresh connection; the body.
async fn http_get(api: SocketAddr, path: &str) -> Result<String> {
    let mut s = TcpStream::connect(api).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_owned()),
        _ => Err(format!("GET {path}: {}", text.lines().next().unwrap_or("")).into()),
    }
}

/// `xueliang_mqtt_messages_total{kind="alarm"}`: device presses stored.
async fn alarms_stored(api: SocketAddr) -> Result<u64> {
    let body = http_get(api, "/metrics").await?;
    // Not chunk-decoded: the line is short enough never to straddle a chunk boundary.
    Ok(body
        .lines()
        .find_map(|l| l.strip_prefix("xueliang_mqtt_messages_total{kind=\"alarm\"} "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as u64)
}

/// The press side: one connection per publisher, devices pinned to them, per-device sequence.
struct Presser {
    clients: Vec<AsyncClient>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    seq: Vec<u64>,
    next_device: usize,
    devices: usize,
    pubacks: Arc<AtomicU64>,
    published: u64,
    tracker: Arc<Mutex<Tracker>>,
}

impl Presser {
    async fn connect(
        port: u16,
        publishers: usize,
        devices: usize,
        tracker: Arc<Mutex<Tracker>>,
    ) -> Result<Presser> {
        let pubacks = Arc::new(AtomicU64::new(0));
        let mut clients = Vec::new();
        let mut tasks = Vec::new();
        for i in 0..publishers {
            let (c, t) = publisher(port, &format!("bench-presser-{i}"), pubacks.clone()).await?;
            clients.push(c);
            tasks.push(t);
        }
        tracker.lock().expect("tracker").pending = vec![VecDeque::new(); devices + 1];
        Ok(Presser {
            clients,
            tasks,
            seq: vec![0; devices + 1],
            next_device: 0,
            devices,
            pubacks,
            published: 0,
            tracker,
        })
    }

    /// One press from `device`, tracked.
    async fn press(&mut self, device: usize) -> Result<()> {
        self.seq[device] += 1;
        let ts = SystemClock.now();
        let payload = format!(
            r#"{{"seq": {}, "ts": "{}", "type": "panic", "battery": 87, "lat": 29.3, "lon": 104.7}}"#,
            self.seq[device],
            ts.to_rfc3339()
        );
        let topic = format!("xueliang/v1/devices/{}/alarm", device_id(device));
        self.tracker
            .lock()
            .expect("tracker")
            .sent(device, Instant::now(), ts.as_millis());
        self.clients[device % self.clients.len()]
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await?;
        self.published += 1;
        Ok(())
    }

    /// The next press of the round robin over the measured devices.
    async fn press_next(&mut self) -> Result<()> {
        let d = self.next_device;
        self.next_device = (self.next_device + 1) % self.devices;
        self.press(d).await
    }

    async fn close(self) {
        for c in &self.clients {
            let _ = c.disconnect().await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        for t in self.tasks {
            t.abort();
        }
    }
}

/// Waits until no press is waiting for the stream (or the timeout); the presses lost.
async fn drain(tracker: &Mutex<Tracker>, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let waiting = tracker.lock().expect("tracker").waiting;
        if waiting == 0 || Instant::now() >= deadline {
            return waiting;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[derive(Clone, Debug, serde::Serialize)]
struct RateRow {
    rate: u32,
    presses: usize,
    lost: usize,
    e2e: Summary,
    handler: Summary,
    floor: Summary,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
struct Burst {
    presses: usize,
    offered_per_sec: f64,
    stored_per_sec: f64,
    delivered_per_sec: f64,
    lost: usize,
    /// % of one core over the burst.
    cpu_service_pct: f64,
    cpu_broker_pct: f64,
    cpu_bench_pct: f64,
    cpu_postgres_pct: f64,
}

#[derive(Clone, Debug, serde::Serialize)]
struct BackendReport {
    backend: String,
    fsync: Summary,
    rates: Vec<RateRow>,
    burst: Burst,
    service_log: String,
}

fn config_text(
    opts: &Opts,
    node: &str,
    data_dir: &Path,
    db_url: &str,
    broker: u16,
    api: SocketAddr,
) -> String {
    let mut t = format!(
        r#"[node]
id = "{node}"
data_dir = {dir:?}
[database]
url = "{db_url}"
[mqtt]
mode = "external"
url = "mqtt://127.0.0.1:{broker}"
[api]
listen = "{api}"
[[api.tokens]]
name = "bench"
token = "{TOKEN}"
role = "admin"
[storage]
min_free_bytes = "1 MiB"
"#,
        dir = data_dir.display().to_string()
    );
    // One more device than measured: its press tells the service is ready.
    for i in 0..=opts.devices {
        t.push_str(&format!(
            "[[devices]]\nid = \"{}\"\nname = \"bench button {i}\"\nlocation = {{ lat = 29.3, lon = 104.7 }}\n",
            device_id(i)
        ));
    }
    t
}

async fn run_backend(opts: &Opts, bin: &Path, backend: &str, base: &Path) -> Result<BackendReport> {
    let dir = tempfile::Builder::new()
        .prefix(&format!("{backend}-"))
        .tempdir_in(base)?;
    eprintln!("alarms: {backend}: run directory {}", dir.path().display());
    let broker = Broker::start(dir.path(), opts.inflight, opts.nodelay)?;
    let mut floors = Vec::new();
    for &rate in &opts.rates {
        let f = floor(broker.port, rate, opts.seconds).await?;
        eprintln!(
            "alarms: {backend}: floor at {rate}/s: p50 {:.3} ms, p99 {:.3} ms",
            f.p50_ms, f.p99_ms
        );
        floors.push(f);
    }
    let fsync = fsync_probe(dir.path())?;
    eprintln!(
        "alarms: {backend}: fsync p50 {:.3} ms, p99 {:.3} ms",
        fsync.p50_ms, fsync.p99_ms
    );

    let pg = if backend == "postgres" {
        Some(TestDb::postgres().await?)
    } else {
        None
    };
    let data_dir = dir.path().join("data");
    std::fs::create_dir_all(&data_dir)?;
    let db_url = match &pg {
        Some(db) => db.config_url(),
        None => format!("sqlite://{}", data_dir.join("xueliang.db").display()),
    };
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let node = format!("alarm-bench-{backend}-{}", std::process::id());
    let cfg = dir.path().join("node.toml");
    std::fs::write(
        &cfg,
        config_text(opts, &node, &data_dir, &db_url, broker.port, api),
    )?;
    let log = dir.path().join("service.log");
    let mut svc = Service::start(bin, &cfg, &log, opts.log.as_deref(), api)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while http_get(api, "/healthz").await.is_err() {
        if svc.exited() || Instant::now() > deadline {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(format!("xueliang did not come up; log:\n{text}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let tracker = Arc::new(Mutex::new(Tracker::default()));
    let stream = open_stream(svc.api, tracker.clone()).await?;
    let mut presser =
        Presser::connect(broker.port, opts.publishers, opts.devices, tracker.clone()).await?;

    // Ready when a press makes it through (the service subscribes after connecting).
    let ready_deadline = Instant::now() + Duration::from_secs(60);
    loop {
        presser.press(opts.devices).await?;
        if drain(&tracker, Duration::from_secs(1)).await == 0 {
            break;
        }
        if svc.exited() || Instant::now() > ready_deadline {
            return Err("no press reached the event stream within 60 s".into());
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    {
        let mut t = tracker.lock().expect("tracker");
        t.take();
        for q in &mut t.pending {
            q.clear();
        }
        t.waiting = 0;
        t.unmatched = 0;
    }

    let mut rates = Vec::new();
    for (&rate, floor) in opts.rates.iter().zip(&floors) {
        let n = (rate * opts.seconds) as usize;
        let start = tokio::time::Instant::now();
        let gap = Duration::from_secs_f64(1.0 / f64::from(rate));
        for i in 0..n {
            tokio::time::sleep_until(start + gap * i as u32).await;
            presser.press_next().await?;
        }
        let lost = drain(&tracker, DRAIN_TIMEOUT).await;
        let (e2e, handler) = tracker.lock().expect("tracker").take();
        let row = RateRow {
            rate,
            presses: n,
            lost,
            e2e: summarize(e2e),
            handler: summarize(handler),
            floor: *floor,
        };
        eprintln!(
            "alarms: {backend}: {rate}/s: press→SSE p50 {:.2} ms p99 {:.2} ms max {:.2} ms (press→handler p50 {:.0} ms p99 {:.0} ms), lost {lost}",
            row.e2e.p50_ms, row.e2e.p99_ms, row.e2e.max_ms, row.handler.p50_ms, row.handler.p99_ms
        );
        rates.push(row);
        // Let the service settle (and the FIFOs empty) before the next run.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    // Burst: every press handed over as fast as the clients take them.
    let stored_before = alarms_stored(api).await?;
    let acks_before = presser.pubacks.load(Ordering::Relaxed);
    let cpu = |pg_too: bool| {
        (
            cpu_seconds(svc.pid()),
            cpu_seconds(broker.pid()),
            cpu_seconds(std::process::id()),
            if pg_too { postgres_cpu_seconds() } else { 0.0 },
        )
    };
    let is_pg = pg.is_some();
    let cpu0 = cpu(is_pg);
    let t0 = Instant::now();
    let n = opts.burst;
    let target = stored_before + n as u64;
    let stored_at = Arc::new(Mutex::new(None::<Instant>));
    let offered_at = Arc::new(Mutex::new(None::<Instant>));
    let poll = {
        let stored_at = stored_at.clone();
        let offered_at = offered_at.clone();
        let pubacks = presser.pubacks.clone();
        tokio::spawn(async move {
            let target_acks = acks_before + n as u64;
            loop {
                let now = Instant::now();
                if offered_at.lock().expect("offered").is_none()
                    && pubacks.load(Ordering::Relaxed) >= target_acks
                {
                    *offered_at.lock().expect("offered") = Some(now);
                }
                if let Ok(c) = alarms_stored(api).await
                    && c >= target
                {
                    *stored_at.lock().expect("stored") = Some(now);
                }
                if stored_at.lock().expect("stored").is_some()
                    && offered_at.lock().expect("offered").is_some()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    for _ in 0..n {
        presser.press_next().await?;
    }
    let lost = drain(&tracker, DRAIN_TIMEOUT).await;
    let _ = tokio::time::timeout(Duration::from_secs(30), poll).await;
    let cpu1 = cpu(is_pg);
    let delivered_at = tracker.lock().expect("tracker").last_match;
    let rate_until = |t: Option<Instant>| {
        t.map(|t| n as f64 / t.duration_since(t0).as_secs_f64())
            .unwrap_or(f64::NAN)
    };
    let window = delivered_at
        .map(|t| t.duration_since(t0).as_secs_f64())
        .unwrap_or_else(|| t0.elapsed().as_secs_f64());
    let pct = |a: f64, b: f64| (b - a) / window * 100.0;
    let burst = Burst {
        presses: n,
        offered_per_sec: rate_until(*offered_at.lock().expect("offered")),
        stored_per_sec: rate_until(*stored_at.lock().expect("stored")),
        delivered_per_sec: if lost == 0 {
            rate_until(delivered_at)
        } else {
            f64::NAN
        },
        lost,
        cpu_service_pct: pct(cpu0.0, cpu1.0),
        cpu_broker_pct: pct(cpu0.1, cpu1.1),
        cpu_bench_pct: pct(cpu0.2, cpu1.2),
        cpu_postgres_pct: pct(cpu0.3, cpu1.3),
    };
    tracker.lock().expect("tracker").take();
    eprintln!(
        "alarms: {backend}: burst of {n}: offered {:.0}/s, stored {:.0}/s, on the stream {:.0}/s, lost {lost}; CPU % of a core: service {:.0}, mosquitto {:.0}, bench {:.0}, postgres {:.0}",
        burst.offered_per_sec,
        burst.stored_per_sec,
        burst.delivered_per_sec,
        burst.cpu_service_pct,
        burst.cpu_broker_pct,
        burst.cpu_bench_pct,
        burst.cpu_postgres_pct
    );
    let unmatched = tracker.lock().expect("tracker").unmatched;
    if unmatched > 0 {
        eprintln!("alarms: {backend}: {unmatched} signals on the stream matched no press");
    }

    presser.close().await;
    stream.abort();
    svc.stop();
    // Keep the service log next to the report; the rest of the run directory goes.
    let kept = target_dir().join(format!("alarm-bench-{backend}.log"));
    let _ = std::fs::copy(&log, &kept);
    drop(pg);
    drop(broker);
    Ok(BackendReport {
        backend: backend.into(),
        fsync,
        rates,
        burst,
        service_log: kept.display().to_string(),
    })
}

fn ms(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else if v < 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.1}")
    }
}

fn report(opts: &Opts, reports: &[BackendReport]) -> Result<()> {
    println!();
    println!(
        "Alarm path, {} devices, {} s per rate, burst {}, {} publisher connections, Mosquitto max_inflight_messages {}, set_tcp_nodelay {}",
        opts.devices, opts.seconds, opts.burst, opts.publishers, opts.inflight, opts.nodelay
    );
    println!();
    println!(
        "| backend | rate | p50 ms | p99 ms | floor p50 | floor p99 | ratio p99/floor | fsync p99 | goal p99 ≤ | met | max presses/s (stored) | max presses/s (SSE) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut goals = Vec::new();
    for r in reports {
        for (i, row) in r.rates.iter().enumerate() {
            let goal = GOAL_FLOOR_FACTOR * row.floor.p99_ms + r.fsync.p99_ms;
            let met = row.lost == 0 && row.e2e.p99_ms <= goal;
            goals.push((
                format!("{} p99 at {}/s ≤ 3 × floor + fsync", r.backend, row.rate),
                format!("{} ms vs {} ms", ms(row.e2e.p99_ms), ms(goal)),
                met,
            ));
            let (stored, sse) = if i == 0 {
                (
                    format!("{:.0}", r.burst.stored_per_sec),
                    format!("{:.0}", r.burst.delivered_per_sec),
                )
            } else {
                (String::new(), String::new())
            };
            println!(
                "| {} | {}/s | {} | {} | {} | {} | {:.1} | {} | {} | {} | {} | {} |",
                r.backend,
                row.rate,
                ms(row.e2e.p50_ms),
                ms(row.e2e.p99_ms),
                ms(row.floor.p50_ms),
                ms(row.floor.p99_ms),
                row.e2e.p99_ms / row.floor.p99_ms,
                ms(r.fsync.p99_ms),
                ms(goal),
                if met { "yes" } else { "no" },
                stored,
                sse
            );
        }
        if r.backend == "sqlite" {
            let rate = r.burst.delivered_per_sec.min(r.burst.stored_per_sec);
            goals.push((
                "sqlite ≥ 5,000 presses/s".into(),
                format!("{rate:.0} presses/s"),
                rate >= GOAL_PRESSES_PER_SEC,
            ));
        }
    }
    println!();
    println!(
        "| burst | offered/s | stored/s | SSE/s | lost | CPU service | CPU mosquitto | CPU bench | CPU postgres |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in reports {
        let b = &r.burst;
        println!(
            "| {} × {} | {:.0} | {:.0} | {:.0} | {} | {:.0}% | {:.0}% | {:.0}% | {:.0}% |",
            r.backend,
            b.presses,
            b.offered_per_sec,
            b.stored_per_sec,
            b.delivered_per_sec,
            b.lost,
            b.cpu_service_pct,
            b.cpu_broker_pct,
            b.cpu_bench_pct,
            b.cpu_postgres_pct
        );
    }
    println!();
    println!("| press → handler (MQTT + queue, ms) | p50 | p99 |");
    println!("|---|---|---|");
    for r in reports {
        for row in &r.rates {
            println!(
                "| {} {}/s | {:.0} | {:.0} |",
                r.backend, row.rate, row.handler.p50_ms, row.handler.p99_ms
            );
        }
    }
    println!();
    println!("Goals:");
    for (what, got, met) in &goals {
        println!("* {what}: {got} — {}", if *met { "met" } else { "NOT met" });
    }
    let json = serde_json::json!({
        "devices": opts.devices,
        "seconds": opts.seconds,
        "burst": opts.burst,
        "publishers": opts.publishers,
        "mosquitto_max_inflight_messages": opts.inflight,
        "mosquitto_set_tcp_nodelay": opts.nodelay,
        "backends": reports,
        "goals": goals.iter().map(|(w, g, m)| serde_json::json!({"goal": w, "got": g, "met": m})).collect::<Vec<_>>(),
    });
    let path = target_dir().join("alarm-bench.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    println!();
    println!("JSON: {}", path.display());
    Ok(())
}

fn main() -> Result<()> {
    let opts = Opts::parse()?;
    origin();
    let bin = xueliang_bin(opts.bin.as_deref(), opts.build)?;
    let base = target_dir().join("alarm-bench");
    std::fs::create_dir_all(&base)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut reports = Vec::new();
    for backend in &opts.backends {
        let r = rt.block_on(Box::pin(run_backend(&opts, &bin, backend, &base)))?;
        reports.push(r);
    }
    drop(rt);
    report(&opts, &reports)?;
    let _ = std::io::stdout().flush();
    Ok(())
}
