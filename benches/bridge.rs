//! Skynet bridge (issue #7): how fast the outbox drains a backlog after an outage, and how long a
//! new priority-1 alarm waits while it does. The real [`Drainer`] (`DrainPolicy::default()`, as
//! `xueliang run` uses it) and the real sinks, against real peers on loopback:
//!
//! * `gb-tcp`, `gb-udp`: the GB/T 28181 lower platform ([`gb28181::spawn`] + [`GbAlarmSink`])
//!   against SIPp playing the city upper platform with `crates/bridge/tests/sipp/uas_upper.xml`
//!   (digest challenge on REGISTER, 200 to every MESSAGE), over SIP TCP or UDP;
//! * `mqtt`: the MQTT uplink ([`MqttUplink`], QoS 1, PUBACK = delivered) to a Mosquitto of the
//!   bench's own on a free loopback port, with a QoS 1 subscriber playing the city consumer.
//!
//! ```text
//! cargo bench -p xueliang-benches --bench bridge
//! cargo bench -p xueliang-benches --bench bridge -- --backends sqlite --sinks gb-tcp --backlog 20000
//! ```
//!
//! Needs `sipp` (Debian `sip-tester`) for the GB/T 28181 runs and `mosquitto` for the MQTT run;
//! a missing tool skips its runs with a note. PostgreSQL runs use the server at
//! `XUELIANG_TEST_PG_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`, trust auth; a
//! fresh database per run, dropped after it) and are skipped with a note when it is unreachable.
//!
//! Options (after `--`):
//! * `--backends sqlite,postgres` which stores to run (default both)
//! * `--sinks gb-tcp,gb-udp,mqtt` which sinks to run (default all three)
//! * `--backlog N`        outbox rows waiting when the drainer starts (default 10,000)
//! * `--channels N`       channels (incidents) the backlog is spread over; default: one row each
//!   for GB/T 28181 (only a new incident goes to the upper platform), 1,000 for MQTT (every
//!   change of an incident goes up: 10 reports each)
//! * `--live-rate R`      new priority-1 rows per second while draining (default 5)
//! * `--batch N`, `--per-channel N`, `--concurrency N` override `DrainPolicy::default()`
//! * `--nodelay`          Mosquitto `set_tcp_nodelay true` (default off, as Mosquitto ships)
//! * `--timeout S`        give up on a drain after S seconds (default 120)
//!
//! Each run (backend × sink), in a fresh database:
//! 1. starts the peer and the sink and waits until it is registered (GB) or connected (MQTT);
//! 2. seeds the backlog through `Store::enqueue_outbox` (500 rows per transaction), created over
//!    the past hour, priorities 2 (panic) and 3 (motion) as the alarm engine gives them;
//! 3. starts the drainer (t0) and, every `1/R` s until the backlog is delivered, commits one new
//!    priority-1 row in a channel of its own and pokes the drainer, as the alarm shell does;
//! 4. **drain time** runs from t0 until the store has no pending row *and* the peer has
//!    received every backlog row (MQTT: the subscriber counted each `event_id`; GB: SIPp's
//!    `-trace_msg` log holds each Alarm MESSAGE's `SN`). Rate = backlog / drain time.
//!
//! **Live latency** runs from the commit of the row's transaction (`enqueue_outbox` returned) to
//! the peer receiving it: for MQTT the subscriber's receive time (one clock, `Instant`); for
//! GB/T 28181 the timestamp SIPp's `-trace_msg` log writes before the received MESSAGE (wall
//! clock, microseconds, SIPp run with `TZ=UTC`) against the wall clock taken at commit. The
//! sink's confirmation (the 200 or PUBACK reached `deliver`) is reported next to it.
//!
//! **Where the time goes**: every `deliver` call passes through a timing wrapper, which yields
//! the delivery round trips, how many were in flight on average, and the stretches with none in
//! flight. A drain round is `due_outbox` → deliveries (at most `concurrency` channels at once,
//! each channel's run in order) → `record_outbox_results` in one transaction; so the stretches
//! with nothing in flight are the store's share between rounds. For GB the SIPp log adds how
//! long SIPp took from the MESSAGE to its 200. CPU per process over the drain comes from
//! `/proc` (% of one core).
//!
//! Goals (from the issue): ≥ 200 alarms/s over GB/T 28181 TCP; live priority-1 p99 < 2 s while
//! draining. The report is printed as markdown and written as JSON to
//! `target/bridge-bench.json`.

#![allow(clippy::print_stdout, reason = "the report is this program's output")]

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::{Notify, watch};
use xueliang_benches::{
    Broker, Summary, cpu_seconds, parse_backends, postgres_cpu_seconds, summarize, target_dir,
    workspace_root,
};
use xueliang_bridge::gb28181::{
    self, Catalog, Channel, ChannelKind, DeviceInfo, GbAlarmSink, PlatformConfig, alarm_method,
    manscdp,
};
use xueliang_bridge::mqtt_uplink::SINK as MQTT_SINK;
use xueliang_bridge::{
    AlarmEventKind, DeliveryError, DrainPolicy, Drainer, MqttUplink, OutboxMetrics, Sink,
    UplinkConfig, alarm_entry,
};
use xueliang_core::config::{Charset, SipTransport};
use xueliang_core::model::{Condition, IncidentState};
use xueliang_core::shutdown::Shutdown;
use xueliang_core::{Clock, EntityId, SystemClock, Timestamp};
use xueliang_store::testing::TestDb;
use xueliang_store::{Incident, OutboxEntry, Store};

type Error = Box<dyn std::error::Error + Send + Sync>;
type Result<T, E = Error> = std::result::Result<T, E>;

const NODE: &str = "bridge-bench-01";
const GB_SINK: &str = "gb28181";
/// The ids and password `uas_upper.xml` checks with `verifyauth`.
const LOCAL_ID: &str = "51012400012000000001";
const SERVER_ID: &str = "51010000002000000001";
const PASSWORD: &str = "gb-secret-1";
/// SNs of live alarms start here; backlog alarms are numbered from 1.
const LIVE_SN_BASE: u32 = 500_000_000;
const GOAL_GB_TCP_PER_SEC: f64 = 200.0;
const GOAL_LIVE_P99_MS: f64 = 2000.0;
/// Rows per seeding transaction.
const SEED_CHUNK: usize = 500;
/// Gaps with nothing in flight shorter than this are a channel's next entry starting, not a
/// round boundary.
const ROUND_GAP: Duration = Duration::from_micros(500);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SinkKind {
    GbTcp,
    GbUdp,
    Mqtt,
}

impl SinkKind {
    fn label(self) -> &'static str {
        match self {
            SinkKind::GbTcp => "gb-tcp",
            SinkKind::GbUdp => "gb-udp",
            SinkKind::Mqtt => "mqtt",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            SinkKind::GbTcp => "GB/T 28181 TCP → SIPp",
            SinkKind::GbUdp => "GB/T 28181 UDP → SIPp",
            SinkKind::Mqtt => "MQTT uplink → Mosquitto",
        }
    }

    fn is_gb(self) -> bool {
        !matches!(self, SinkKind::Mqtt)
    }
}

#[derive(Clone, Debug)]
struct Opts {
    backends: Vec<String>,
    sinks: Vec<SinkKind>,
    backlog: usize,
    channels: Option<usize>,
    live_rate: f64,
    policy: DrainPolicy,
    nodelay: bool,
    timeout: Duration,
}

impl Opts {
    fn parse() -> Result<Opts> {
        let mut o = Opts {
            backends: vec!["sqlite".into(), "postgres".into()],
            sinks: vec![SinkKind::GbTcp, SinkKind::GbUdp, SinkKind::Mqtt],
            backlog: 10_000,
            channels: None,
            live_rate: 5.0,
            policy: DrainPolicy::default(),
            nodelay: false,
            timeout: Duration::from_secs(120),
        };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            let mut value = || args.next().ok_or_else(|| format!("{a} needs a value"));
            match a.as_str() {
                // cargo passes `--bench` to harness-less bench targets.
                "--bench" => {}
                "--backends" => o.backends = parse_backends(&value()?)?,
                "--sinks" => {
                    o.sinks = value()?
                        .split(',')
                        .map(|s| match s {
                            "gb-tcp" => Ok(SinkKind::GbTcp),
                            "gb-udp" => Ok(SinkKind::GbUdp),
                            "mqtt" => Ok(SinkKind::Mqtt),
                            other => Err(format!("unknown sink {other:?}: gb-tcp, gb-udp or mqtt")),
                        })
                        .collect::<Result<_, _>>()?;
                }
                "--backlog" => o.backlog = value()?.parse()?,
                "--channels" => o.channels = Some(value()?.parse::<usize>()?.max(1)),
                "--live-rate" => o.live_rate = value()?.parse()?,
                "--batch" => o.policy.batch = value()?.parse()?,
                "--per-channel" => o.policy.per_channel = value()?.parse()?,
                "--concurrency" => o.policy.concurrency = value()?.parse()?,
                "--nodelay" => o.nodelay = true,
                "--timeout" => o.timeout = Duration::from_secs(value()?.parse()?),
                other => return Err(format!("unknown option {other:?}").into()),
            }
        }
        if o.backlog == 0 || o.live_rate <= 0.0 || !o.live_rate.is_finite() {
            return Err("--backlog and --live-rate must be positive".into());
        }
        Ok(o)
    }

    fn channels(&self, kind: SinkKind) -> usize {
        let default = if kind.is_gb() {
            self.backlog
        } else {
            1000.min(self.backlog)
        };
        self.channels.unwrap_or(default).min(self.backlog)
    }
}

fn have(tool: &str, arg: &str) -> bool {
    Command::new(tool)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn free_port(tcp: bool) -> Result<u16> {
    Ok(if tcp {
        std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
    } else {
        std::net::UdpSocket::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
    })
}

/// Microseconds since the Unix epoch, now.
fn wall_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

// ---- peers ------------------------------------------------------------------------------------

/// SIPp playing the upper platform, killed on drop.
struct Sipp {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Sipp {
    fn start(dir: &Path, tcp: bool) -> Result<Sipp> {
        let port = free_port(tcp)?;
        let scenario = workspace_root().join("crates/bridge/tests/sipp/uas_upper.xml");
        let log = dir.join("sipp-messages.log");
        let child = Command::new("sipp")
            .arg("-sf")
            .arg(&scenario)
            .args(["-i", "127.0.0.1", "-p", &port.to_string()])
            .args(["-t", if tcp { "t1" } else { "u1" }])
            .args(["-nostdin", "-trace_msg", "-trace_err"])
            .arg("-message_file")
            .arg(&log)
            .arg("-error_file")
            .arg(dir.join("sipp-errors.log"))
            // A backstop: SIPp never outlives a crashed bench by more than this.
            .args(["-timeout", "900s"])
            // The message log's timestamps are local time: make that UTC.
            .env("TZ", "UTC")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("start sipp (Debian package sip-tester): {e}"))?;
        // SIPp binds within a few ms; the platform retries registration anyway.
        std::thread::sleep(Duration::from_millis(300));
        Ok(Sipp { child, port, log })
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An Alarm MESSAGE as SIPp logged it.
#[derive(Clone, Debug)]
struct SippAlarm {
    sn: u32,
    /// When SIPp read it (µs since the epoch).
    received_us: i64,
    /// When SIPp wrote its 200, if it did.
    answered_us: Option<i64>,
}

/// `YYYY-MM-DD HH:MM:SS.ffffff` (UTC) → µs since the epoch.
fn parse_sipp_time(s: &str) -> Option<i64> {
    let (date, time) = s.trim().split_once(' ')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|x| x.parse::<i64>().ok());
    let (h, mi, sec) = (t.next()??, t.next()??, t.next()??);
    let micros: i64 = format!("{frac:0<6}").get(..6)?.parse().ok()?;
    // Days from the civil date (H. Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + h * 3600 + mi * 60 + sec) * 1_000_000) + micros)
}

fn between<'a>(s: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = s.find(open)? + open.len();
    let len = s[start..].find(close)?;
    Some(&s[start..start + len])
}

fn sip_header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Every Alarm MESSAGE SIPp received (retransmissions included), with the time of its 200.
fn sipp_alarms(log: &Path) -> Vec<SippAlarm> {
    let raw = std::fs::read(log).unwrap_or_default();
    // Bodies are GB 18030; the tags and numbers read the same in a lossy UTF-8 view.
    let text = String::from_utf8_lossy(&raw);
    let mut out: Vec<SippAlarm> = Vec::new();
    let mut by_call: HashMap<String, usize> = HashMap::new();
    for block in text.split("----------------------------------------------- ") {
        let Some((stamp, rest)) = block.split_once('\n') else {
            continue;
        };
        let Some(at) = parse_sipp_time(stamp) else {
            continue;
        };
        let Some((kind, msg)) = rest.split_once('\n') else {
            continue;
        };
        let msg = msg.trim_start();
        if kind.contains("message received") {
            if !msg.starts_with("MESSAGE ") || !msg.contains("<CmdType>Alarm</CmdType>") {
                continue;
            }
            let Some(sn) = between(msg, "<SN>", "</SN>").and_then(|v| v.trim().parse().ok()) else {
                continue;
            };
            if let Some(call) = sip_header(msg, "Call-ID") {
                by_call.insert(call.to_owned(), out.len());
            }
            out.push(SippAlarm {
                sn,
                received_us: at,
                answered_us: None,
            });
        } else if kind.contains("message sent")
            && msg.starts_with("SIP/2.0 200")
            && let Some(i) = sip_header(msg, "Call-ID").and_then(|c| by_call.get(c))
            && let Some(a) = out.get_mut(*i)
        {
            a.answered_us.get_or_insert(at);
        }
    }
    out
}

// ---- what the peer received -------------------------------------------------------------------

/// One seeded or live row, by the key the peer sees (MQTT `event_id`, GB `SN`).
#[derive(Clone, Debug)]
struct Row {
    live: bool,
    /// `(Instant, wall µs)` right after the row's transaction committed (live rows).
    committed: Option<(Instant, i64)>,
    /// First receipt at the peer: `Instant` (MQTT subscriber) or wall µs (SIPp log).
    received: Option<Instant>,
    received_us: Option<i64>,
}

#[derive(Debug, Default)]
struct Tracker {
    rows: HashMap<String, Row>,
    backlog: usize,
    backlog_seen: usize,
    /// When the last backlog row reached the peer.
    backlog_done: Option<Instant>,
    backlog_done_us: Option<i64>,
    live: usize,
    live_seen: usize,
    duplicates: usize,
    unknown: usize,
}

impl Tracker {
    fn add(&mut self, key: String, live: bool) {
        if live {
            self.live += 1;
        } else {
            self.backlog += 1;
        }
        self.rows.insert(
            key,
            Row {
                live,
                committed: None,
                received: None,
                received_us: None,
            },
        );
    }

    /// The peer got `key` (at `at`, or at wall time `at_us`).
    fn received(&mut self, key: &str, at: Option<Instant>, at_us: Option<i64>) {
        let Some(row) = self.rows.get_mut(key) else {
            self.unknown += 1;
            return;
        };
        if row.received.is_some() || row.received_us.is_some() {
            self.duplicates += 1;
            return;
        }
        row.received = at;
        row.received_us = at_us;
        if row.live {
            self.live_seen += 1;
        } else {
            self.backlog_seen += 1;
            if self.backlog_seen == self.backlog {
                self.backlog_done = at;
                self.backlog_done_us = at_us;
            }
        }
    }

    /// Commit → peer, in ms, of the live rows that arrived.
    fn live_latency(&self) -> Vec<f64> {
        self.rows
            .values()
            .filter(|r| r.live)
            .filter_map(|r| {
                let (c, c_us) = r.committed?;
                match (r.received, r.received_us) {
                    (Some(at), _) => Some(at.saturating_duration_since(c).as_secs_f64() * 1e3),
                    (None, Some(us)) => Some((us - c_us) as f64 / 1e3),
                    _ => None,
                }
            })
            .collect()
    }
}

// ---- the timing wrapper around the real sink --------------------------------------------------

/// What the wrapper saw of the deliveries.
#[derive(Debug, Default)]
struct SinkStats {
    /// Backlog rows; accounting of the in-flight profile stops once all are acknowledged.
    backlog: usize,
    started: Option<Instant>,
    in_flight: usize,
    max_in_flight: usize,
    last_change: Option<Instant>,
    /// ∫ in-flight dt and the time with at least one delivery in flight, in seconds.
    area: f64,
    busy: f64,
    first_delivery: Option<Instant>,
    idle_since: Option<Instant>,
    /// Stretches with nothing in flight after the first delivery, in seconds.
    gaps: Vec<f64>,
    calls: usize,
    failures: usize,
    first_failure: Option<String>,
    round_trips_ms: Vec<f64>,
    backlog_acked: HashSet<EntityId>,
    backlog_acked_at: Option<Instant>,
    live_acked: HashMap<EntityId, Instant>,
}

impl SinkStats {
    fn done(&self) -> bool {
        self.backlog_acked_at.is_some()
    }

    fn advance(&mut self, now: Instant) {
        if self.done() {
            return;
        }
        if let Some(last) = self.last_change {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            self.area += dt * self.in_flight as f64;
            if self.in_flight > 0 {
                self.busy += dt;
            }
        }
        self.last_change = Some(now);
    }

    fn begin(&mut self, now: Instant) {
        self.advance(now);
        self.calls += 1;
        if self.in_flight == 0 {
            if let Some(idle) = self.idle_since.take()
                && !self.done()
            {
                self.gaps
                    .push(now.saturating_duration_since(idle).as_secs_f64());
            }
            self.first_delivery.get_or_insert(now);
        }
        self.in_flight += 1;
        self.max_in_flight = self.max_in_flight.max(self.in_flight);
    }

    fn end(&mut self, entry: &OutboxEntry, began: Instant, ok: Result<(), &DeliveryError>) {
        let now = Instant::now();
        self.advance(now);
        self.in_flight -= 1;
        if self.in_flight == 0 {
            self.idle_since = Some(now);
        }
        self.round_trips_ms
            .push(now.saturating_duration_since(began).as_secs_f64() * 1e3);
        match ok {
            Ok(()) if entry.priority == 1 => {
                self.live_acked.entry(entry.id).or_insert(now);
            }
            Ok(()) => {
                if self.backlog_acked.insert(entry.id) && self.backlog_acked.len() == self.backlog {
                    self.backlog_acked_at = Some(now);
                }
            }
            Err(e) => {
                self.failures += 1;
                self.first_failure
                    .get_or_insert_with(|| e.message().to_owned());
            }
        }
    }
}

/// Delegates to the real sink and times every call. Live rows are the only priority-1 rows.
struct Timed {
    inner: Arc<dyn Sink>,
    stats: Arc<Mutex<SinkStats>>,
}

impl Sink for Timed {
    fn name(&self) -> &str {
        self.inner.name()
    }

    // `Sink` is an `#[async_trait]` trait; this is the signature the macro gives it, written out
    // so the bench needs no proc-macro dependency of its own.
    fn deliver<'life0, 'life1, 'async_trait>(
        &'life0 self,
        entry: &'life1 OutboxEntry,
    ) -> Pin<Box<dyn Future<Output = Result<(), DeliveryError>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            let began = Instant::now();
            self.stats.lock().expect("stats").begin(began);
            let r = self.inner.deliver(entry).await;
            self.stats
                .lock()
                .expect("stats")
                .end(entry, began, r.as_ref().map(|_| ()));
            r
        })
    }
}

// ---- payloads ---------------------------------------------------------------------------------

fn outbox_entry(
    sink: &str,
    channel: String,
    priority: i64,
    at: Timestamp,
    payload: Vec<u8>,
) -> OutboxEntry {
    OutboxEntry {
        id: EntityId::new_ordered(at),
        node_id: NODE.into(),
        sink: sink.into(),
        channel,
        priority,
        created_at: at,
        payload,
        attempts: 0,
        next_attempt: at,
        last_error: None,
        delivered_at: None,
        expired_at: None,
    }
}

fn incident(id: EntityId, kind: &str, priority: i64, version: i64, at: Timestamp) -> Incident {
    Incident {
        id,
        node_id: NODE.into(),
        kind: kind.into(),
        source_id: format!("btn-{}", version % 97),
        priority,
        condition: Condition::Active,
        state: IncidentState::Raised,
        outcome: None,
        title: "一键报警 村口".into(),
        lat: Some(29.3),
        lon: Some(104.7),
        opened_at: at,
        updated_at: at,
        resolved_at: None,
        escalation_level: 0,
        signal_count: version,
        version,
    }
}

/// An Alarm notify for the upper platform, as `xueliang run` builds it for a new incident of
/// outbox priority `priority` (2 panic → GB priority 1 by device, 3 motion → 2 by video).
fn gb_entry(sn: u32, priority: i64, at: Timestamp) -> OutboxEntry {
    let (gb_priority, method, alarm_type, device, what) = match priority {
        1 | 2 => (1, alarm_method::DEVICE, None, 134, "一键报警"),
        _ => (2, alarm_method::VIDEO, Some(2), 132, "移动侦测"),
    };
    let time = at
        .to_datetime()
        .with_timezone(&manscdp::china_standard_time());
    let body = gb28181::alarm_body(
        sn,
        &format!("5101240001{device}{:07}", sn % 10_000_000),
        gb_priority,
        method,
        alarm_type,
        time,
        Some(29.3),
        Some(104.7),
        &format!("{what} {sn}"),
        Charset::Gb18030,
    );
    let channel = EntityId::new_ordered(at).to_string();
    outbox_entry(GB_SINK, channel, priority, at, body)
}

/// Backlog priorities: one panic (2) to three motion (3) alarms.
fn backlog_priority(channel: usize) -> i64 {
    if channel.is_multiple_of(4) { 2 } else { 3 }
}

/// The backlog: `(entry, peer key)`, created over the hour before `now`, in id order.
fn backlog(
    kind: SinkKind,
    n: usize,
    channels: usize,
    now: Timestamp,
) -> Vec<(OutboxEntry, String)> {
    let start = now.saturating_add_millis(-3_600_000);
    let at = |i: usize| start.saturating_add_millis((i as i64 * 3_600_000) / n as i64);
    if kind.is_gb() {
        // One row per channel unless told otherwise: the rows of a channel share its id.
        let names: Vec<String> = (0..channels)
            .map(|_| EntityId::new_ordered(start).to_string())
            .collect();
        return (0..n)
            .map(|i| {
                let sn = i as u32 + 1;
                let ch = i % channels;
                let mut e = gb_entry(sn, backlog_priority(ch), at(i));
                e.channel = names[ch].clone();
                (e, sn.to_string())
            })
            .collect();
    }
    let incidents: Vec<EntityId> = (0..channels)
        .map(|_| EntityId::new_ordered(start))
        .collect();
    (0..n)
        .map(|i| {
            let ch = i % channels;
            let version = (i / channels) as i64 + 1;
            let prio = backlog_priority(ch);
            let kind = if prio == 2 { "panic" } else { "motion" };
            let ev = EntityId::new_ordered(at(i));
            let inc = incident(incidents[ch], kind, prio, version, at(i));
            let k = if version == 1 {
                AlarmEventKind::New
            } else {
                AlarmEventKind::Update
            };
            (
                alarm_entry(MQTT_SINK, NODE, ev, &inc, k, at(i)),
                ev.to_string(),
            )
        })
        .collect()
}

/// The `i`-th live priority-1 row (a new incident of its own) and its peer key.
fn live_row(kind: SinkKind, i: u32) -> (OutboxEntry, String) {
    let now = SystemClock.now();
    if kind.is_gb() {
        let sn = LIVE_SN_BASE + i;
        return (gb_entry(sn, 1, now), sn.to_string());
    }
    let ev = EntityId::new_ordered(now);
    let inc = incident(EntityId::new_ordered(now), "panic", 1, 1, now);
    (
        alarm_entry(MQTT_SINK, NODE, ev, &inc, AlarmEventKind::New, now),
        ev.to_string(),
    )
}

// ---- one run ----------------------------------------------------------------------------------

#[derive(Clone, Debug, Default, serde::Serialize)]
struct Breakdown {
    /// Drainer start → first `deliver` (housekeeping, the first `due_outbox`).
    startup_ms: f64,
    /// Time with at least one delivery in flight, until the last backlog acknowledgement.
    delivering_s: f64,
    /// Time with none in flight after the first delivery: the store between rounds.
    between_rounds_s: f64,
    /// Stretches with none in flight longer than `ROUND_GAP` (≈ rounds − 1).
    round_gaps: usize,
    round_gap: Summary,
    mean_in_flight: f64,
    max_in_flight: usize,
    deliver: Summary,
    calls: usize,
    failures: usize,
    first_failure: Option<String>,
    /// GB: SIPp's MESSAGE received → 200 sent.
    peer_answer: Option<Summary>,
    cpu_bench_pct: f64,
    cpu_peer_pct: f64,
    cpu_postgres_pct: f64,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
struct RunReport {
    backend: String,
    sink: String,
    backlog: usize,
    channels: usize,
    seed_s: f64,
    /// All backlog rows acknowledged to the sink (200 / PUBACK).
    acked_s: f64,
    /// The store had no pending row.
    stored_s: f64,
    /// The peer had received every backlog row.
    peer_s: f64,
    drain_s: f64,
    per_sec: f64,
    timed_out: bool,
    backlog_acked: usize,
    backlog_at_peer: usize,
    duplicates_at_peer: usize,
    recorded_delivered: f64,
    live_sent: usize,
    live_missing: usize,
    /// Commit → received by the peer.
    live: Summary,
    /// Commit → the sink's `deliver` returned Ok.
    live_confirmed: Summary,
    breakdown: Breakdown,
}

/// `xueliang_outbox_delivered_total{sink}` from the run's registry.
fn delivered_metric(reg: &prometheus::Registry, sink: &str) -> f64 {
    reg.gather()
        .iter()
        .filter(|f| f.name() == "xueliang_outbox_delivered_total")
        .flat_map(|f| f.get_metric())
        .find(|m| m.get_label().iter().any(|l| l.value() == sink))
        .map_or(0.0, |m| m.get_counter().get_value())
}

/// Polls `cond` every 10 ms until it holds or `limit` passes; whether it held.
async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

struct Peer {
    sipp: Option<Sipp>,
    broker: Option<Broker>,
    subscriber: Option<tokio::task::JoinHandle<()>>,
}

impl Peer {
    fn pid(&self) -> Option<u32> {
        self.sipp
            .as_ref()
            .map(|s| s.child.id())
            .or_else(|| self.broker.as_ref().map(Broker::pid))
    }
}

fn platform_config(port: u16, tcp: bool) -> Result<PlatformConfig> {
    Ok(PlatformConfig {
        local_id: LOCAL_ID.into(),
        local_listen: "127.0.0.1:0".parse()?,
        server_id: SERVER_ID.into(),
        server_domain: "5101000000".into(),
        server_addr: format!("127.0.0.1:{port}"),
        transport: if tcp {
            SipTransport::Tcp
        } else {
            SipTransport::Udp
        },
        password: PASSWORD.into(),
        // Production timers (`PlatformConfig::from_config` defaults) except the first
        // registration retry, so a SIPp still binding costs half a second, not five.
        register_expires: Duration::from_secs(3600),
        keepalive_interval: Duration::from_secs(60),
        keepalive_max_misses: 3,
        charset: Charset::Gb18030,
        gb2022: false,
        t1: Duration::from_millis(500),
        transaction_timeout: Duration::from_secs(32),
        retry_base: Duration::from_millis(500),
        retry_cap: Duration::from_secs(4),
        catalog_page_size: 4,
        device_info: DeviceInfo {
            name: "bridge bench".into(),
            manufacturer: "Xueliang".into(),
            model: "xueliang".into(),
            firmware: "0".into(),
        },
        user_agent: "xueliang-bridge-bench".into(),
        shutdown_grace: Duration::from_secs(2),
    })
}

fn catalog() -> Catalog {
    Catalog {
        channels: vec![
            Channel {
                id: "51012400011320000001".into(),
                name: "村口东".into(),
                kind: ChannelKind::Camera,
                online: true,
                location: Some((29.3, 104.7)),
                address: None,
            },
            Channel {
                id: "51012400011340000001".into(),
                name: "一键报警 1".into(),
                kind: ChannelKind::AlarmInput,
                online: true,
                location: Some((29.3, 104.7)),
                address: None,
            },
        ],
    }
}

/// A sink ready to deliver, its peer and its tasks.
struct Started {
    sink: Arc<dyn Sink>,
    peer: Peer,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Keeps the GB catalog open while the platform runs.
    _catalog: Option<watch::Sender<Catalog>>,
}

/// Starts the peer and the sink; returns once the sink can deliver.
async fn start_sink(
    kind: SinkKind,
    opts: &Opts,
    dir: &Path,
    tracker: &Arc<Mutex<Tracker>>,
    stop: &Shutdown,
) -> Result<Started> {
    if kind.is_gb() {
        let tcp = kind == SinkKind::GbTcp;
        let sipp = Sipp::start(dir, tcp)?;
        let (tx, rx) = watch::channel(catalog());
        let (handle, task) =
            gb28181::spawn(platform_config(sipp.port, tcp)?, rx, stop.clone()).await?;
        tokio::time::timeout(Duration::from_secs(15), handle.registered())
            .await
            .map_err(|_| "the platform did not register with SIPp within 15 s")??;
        // Let SIPp's catalog query and our answers pass before t0.
        tokio::time::sleep(Duration::from_millis(800)).await;
        let sink: Arc<dyn Sink> = Arc::new(GbAlarmSink::named(GB_SINK, handle));
        let peer = Peer {
            sipp: Some(sipp),
            broker: None,
            subscriber: None,
        };
        return Ok(Started {
            sink,
            peer,
            tasks: vec![task],
            _catalog: Some(tx),
        });
    }
    let broker = Broker::start(dir, 100, opts.nodelay)?;
    // The city's consumer: counts each event_id as it arrives.
    let mut o = MqttOptions::new("bridge-bench-city-consumer", "127.0.0.1", broker.port);
    o.set_clean_session(true)
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut el) = AsyncClient::new(o, 100);
    client
        .subscribe("skynet/v1/+/alarms", QoS::AtLeastOnce)
        .await?;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let t = tracker.clone();
    let subscriber = tokio::spawn(async move {
        let _client = client;
        let mut ready = Some(ready_tx);
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let now = Instant::now();
                    let key = serde_json::from_slice::<serde_json::Value>(&p.payload)
                        .ok()
                        .and_then(|v| v["event_id"].as_str().map(str::to_owned))
                        .unwrap_or_default();
                    t.lock().expect("tracker").received(&key, Some(now), None);
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("bridge: city consumer connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), ready_rx)
        .await
        .map_err(|_| "the city consumer did not subscribe within 10 s")??;
    let (uplink, task) = MqttUplink::start(
        UplinkConfig::new("127.0.0.1", broker.port, NODE),
        stop.clone(),
    );
    if !wait_until(Duration::from_secs(10), || uplink.is_connected()).await {
        return Err("the uplink did not connect to Mosquitto within 10 s".into());
    }
    let peer = Peer {
        sipp: None,
        broker: Some(broker),
        subscriber: Some(subscriber),
    };
    Ok(Started {
        sink: Arc::new(uplink),
        peer,
        tasks: vec![task],
        _catalog: None,
    })
}

/// Commits a priority-1 row every `1 / rate` s until `stop`, poking the drainer after each.
async fn live_loop(
    kind: SinkKind,
    rate: f64,
    store: Arc<dyn Store>,
    notify: Arc<Notify>,
    tracker: Arc<Mutex<Tracker>>,
    committed: Arc<Mutex<HashMap<EntityId, Instant>>>,
    stop: Arc<AtomicBool>,
) -> Result<usize> {
    let gap = Duration::from_secs_f64(1.0 / rate);
    let start = tokio::time::Instant::now();
    let mut i = 0u32;
    loop {
        // Stop is checked every 10 ms, so the end of the drain is not held to the next tick.
        let due = start + gap * i;
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(i as usize);
            }
            let now = tokio::time::Instant::now();
            if now >= due {
                break;
            }
            tokio::time::sleep_until(due.min(now + Duration::from_millis(10))).await;
        }
        let (e, key) = live_row(kind, i);
        tracker.lock().expect("tracker").add(key.clone(), true);
        store.enqueue_outbox(std::slice::from_ref(&e)).await?;
        let at = (Instant::now(), wall_us());
        if let Some(r) = tracker.lock().expect("tracker").rows.get_mut(&key) {
            r.committed = Some(at);
        }
        committed.lock().expect("committed").insert(e.id, at.0);
        notify.notify_one();
        i += 1;
    }
}

async fn run_one(opts: &Opts, backend: &str, kind: SinkKind, base: &Path) -> Result<RunReport> {
    let dir = tempfile::Builder::new()
        .prefix(&format!("{backend}-{}-", kind.label()))
        .tempdir_in(base)?;
    let db = if backend == "postgres" {
        TestDb::postgres().await?
    } else {
        TestDb::sqlite()
    };
    let store = db.open(NODE).await?;
    let stop = Shutdown::new();
    let tracker = Arc::new(Mutex::new(Tracker::default()));
    let Started {
        sink,
        peer,
        mut tasks,
        _catalog: catalog,
    } = start_sink(kind, opts, dir.path(), &tracker, &stop).await?;
    let sink_name = sink.name().to_owned();

    // The outage's backlog.
    let n = opts.backlog;
    let channels = opts.channels(kind);
    let rows = backlog(kind, n, channels, SystemClock.now());
    {
        let mut t = tracker.lock().expect("tracker");
        for (_, key) in &rows {
            t.add(key.clone(), false);
        }
    }
    let seed_start = Instant::now();
    let entries: Vec<OutboxEntry> = rows.into_iter().map(|(e, _)| e).collect();
    for chunk in entries.chunks(SEED_CHUNK) {
        store.enqueue_outbox(chunk).await?;
    }
    let seed_s = seed_start.elapsed().as_secs_f64();
    drop(entries);
    eprintln!(
        "bridge: {backend} {}: seeded {n} rows over {channels} channels in {seed_s:.1} s",
        kind.label()
    );

    let stats = Arc::new(Mutex::new(SinkStats {
        backlog: n,
        ..Default::default()
    }));
    let reg = prometheus::Registry::new();
    let metrics = OutboxMetrics::register(&reg)?;
    let timed = Arc::new(Timed {
        inner: sink,
        stats: stats.clone(),
    });
    let drainer = Drainer::new(
        store.clone(),
        timed,
        opts.policy.clone(),
        &metrics,
        Arc::new(SystemClock),
    );
    let notify = drainer.notifier();
    let peer_pid = peer.pid();
    let is_pg = backend == "postgres";
    let cpu = || {
        (
            cpu_seconds(std::process::id()),
            peer_pid.map_or(0.0, cpu_seconds),
            if is_pg { postgres_cpu_seconds() } else { 0.0 },
        )
    };
    let cpu0 = cpu();

    // t0.
    let t0 = Instant::now();
    let t0_us = wall_us();
    stats.lock().expect("stats").started = Some(t0);
    let drain_task = tokio::spawn(drainer.run(stop.clone()));
    let live_stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(Mutex::new(HashMap::new()));
    let live_task = tokio::spawn(live_loop(
        kind,
        opts.live_rate,
        store.clone(),
        notify,
        tracker.clone(),
        committed.clone(),
        live_stop.clone(),
    ));

    let acked = wait_until(opts.timeout, || stats.lock().expect("stats").done()).await;
    let cpu1 = cpu();
    let cpu_window = t0.elapsed().as_secs_f64();
    live_stop.store(true, Ordering::Relaxed);
    let live_sent = live_task.await??;
    if !acked {
        eprintln!(
            "bridge: {backend} {}: backlog not delivered within {} s",
            kind.label(),
            opts.timeout.as_secs()
        );
    }
    // The store: nothing pending (the live rows still on their way included).
    let mut stored_at = None;
    let deadline = Instant::now()
        + if acked {
            Duration::from_secs(30)
        } else {
            Duration::ZERO
        };
    loop {
        if store.outbox_stats(&sink_name).await?.pending == 0 {
            stored_at = Some(Instant::now());
            break;
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Every live row at the peer (MQTT) or acknowledged (GB; SIPp's log is read below).
    let live_in = |c: &HashMap<EntityId, Instant>| c.len();
    wait_until(Duration::from_secs(if acked { 30 } else { 0 }), || {
        if kind.is_gb() {
            stats.lock().expect("stats").live_acked.len()
                >= live_in(&committed.lock().expect("committed"))
        } else {
            let t = tracker.lock().expect("tracker");
            t.live_seen >= t.live && t.backlog_seen >= t.backlog
        }
    })
    .await;
    let mut peer_answer = None;
    if let Some(sipp) = &peer.sipp {
        // SIPp writes each message as it goes; give its log a moment to hold them all.
        let mut alarms = Vec::new();
        let _ = wait_until(Duration::from_secs(5), || {
            alarms = sipp_alarms(&sipp.log);
            let sns: HashSet<u32> = alarms.iter().map(|a| a.sn).collect();
            let t = tracker.lock().expect("tracker");
            sns.len() >= t.backlog + t.live
        })
        .await;
        let mut t = tracker.lock().expect("tracker");
        for a in &alarms {
            t.received(&a.sn.to_string(), None, Some(a.received_us));
        }
        peer_answer = Some(summarize(
            alarms
                .iter()
                .filter_map(|a| Some((a.answered_us? - a.received_us) as f64 / 1e3))
                .collect(),
        ));
    }
    let recorded_delivered = delivered_metric(&reg, &sink_name);

    stop.trigger();
    let _ = tokio::time::timeout(Duration::from_secs(10), drain_task).await;
    for t in tasks.drain(..) {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    if let Some(s) = &peer.subscriber {
        s.abort();
    }
    drop(catalog);

    let st = stats.lock().expect("stats");
    let t = tracker.lock().expect("tracker");
    let since_t0 = |at: Option<Instant>| at.map(|a| a.saturating_duration_since(t0).as_secs_f64());
    let acked_s = since_t0(st.backlog_acked_at);
    let stored_s = since_t0(stored_at);
    let peer_s =
        since_t0(t.backlog_done).or_else(|| t.backlog_done_us.map(|us| (us - t0_us) as f64 / 1e6));
    let drain_s = match (acked_s, stored_s, peer_s) {
        (Some(_), Some(s), Some(p)) => Some(s.max(p)),
        _ => None,
    };
    let committed = committed.lock().expect("committed");
    let live_confirmed: Vec<f64> = st
        .live_acked
        .iter()
        .filter_map(|(id, at)| {
            let c = committed.get(id)?;
            Some(at.saturating_duration_since(*c).as_secs_f64() * 1e3)
        })
        .collect();
    let live = summarize(t.live_latency());
    let nan = f64::NAN;
    let gaps: Vec<f64> = st
        .gaps
        .iter()
        .copied()
        .filter(|g| *g >= ROUND_GAP.as_secs_f64())
        .map(|g| g * 1e3)
        .collect();
    let breakdown = Breakdown {
        startup_ms: st
            .first_delivery
            .map_or(nan, |f| f.saturating_duration_since(t0).as_secs_f64() * 1e3),
        delivering_s: st.busy,
        between_rounds_s: st.gaps.iter().sum(),
        round_gaps: gaps.len(),
        round_gap: summarize(gaps),
        mean_in_flight: if st.busy > 0.0 {
            st.area / st.busy
        } else {
            nan
        },
        max_in_flight: st.max_in_flight,
        deliver: summarize(st.round_trips_ms.clone()),
        calls: st.calls,
        failures: st.failures,
        first_failure: st.first_failure.clone(),
        peer_answer,
        cpu_bench_pct: (cpu1.0 - cpu0.0) / cpu_window * 100.0,
        cpu_peer_pct: (cpu1.1 - cpu0.1) / cpu_window * 100.0,
        cpu_postgres_pct: (cpu1.2 - cpu0.2) / cpu_window * 100.0,
    };
    let report = RunReport {
        backend: backend.into(),
        sink: kind.label().into(),
        backlog: n,
        channels,
        seed_s,
        acked_s: acked_s.unwrap_or(nan),
        stored_s: stored_s.unwrap_or(nan),
        peer_s: peer_s.unwrap_or(nan),
        drain_s: drain_s.unwrap_or(nan),
        per_sec: drain_s.map_or_else(
            // Timed out: what got through in the time given.
            || st.backlog_acked.len() as f64 / opts.timeout.as_secs_f64(),
            |d| n as f64 / d,
        ),
        timed_out: drain_s.is_none(),
        backlog_acked: st.backlog_acked.len(),
        backlog_at_peer: t.backlog_seen,
        duplicates_at_peer: t.duplicates,
        recorded_delivered,
        live_sent,
        live_missing: live_sent.saturating_sub(live.n),
        live,
        live_confirmed: summarize(live_confirmed),
        breakdown,
    };
    drop((st, t, committed));
    eprintln!(
        "bridge: {backend} {}: drained {n} in {:.2} s ({:.0}/s); live p50 {:.0} ms p99 {:.0} ms max {:.0} ms (n {})",
        kind.label(),
        report.drain_s,
        report.per_sec,
        report.live.p50_ms,
        report.live.p99_ms,
        report.live.max_ms,
        report.live.n
    );
    drop(peer);
    drop(store);
    drop(db);
    Ok(report)
}

// ---- report -----------------------------------------------------------------------------------

fn ms(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else if v < 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.0}")
    }
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn live_met(r: &RunReport) -> bool {
    r.live_missing == 0 && r.live.n > 0 && r.live.p99_ms < GOAL_LIVE_P99_MS
}

fn report(opts: &Opts, runs: &[RunReport], skipped: &[String]) -> Result<()> {
    let p = &opts.policy;
    println!();
    println!(
        "Skynet bridge drain: backlog {} rows, live priority-1 rows at {}/s while draining; \
         DrainPolicy batch {}, per_channel {}, concurrency {}",
        opts.backlog, opts.live_rate, p.batch, p.per_channel, p.concurrency
    );
    println!();
    println!(
        "| backend | sink | channels | drained in s | alarms/s | ≥ 200/s | live n | live p50 ms | live p99 ms | live max ms | p99 < 2 s | confirmed p99 ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut goals = Vec::new();
    for r in runs {
        let kind = match r.sink.as_str() {
            "gb-tcp" => SinkKind::GbTcp,
            "gb-udp" => SinkKind::GbUdp,
            _ => SinkKind::Mqtt,
        };
        let rate_goal = kind == SinkKind::GbTcp;
        let rate_met = !r.timed_out && r.per_sec >= GOAL_GB_TCP_PER_SEC;
        if rate_goal {
            goals.push((
                format!(
                    "{} {}: ≥ 200 alarms/s over GB/T 28181 TCP",
                    r.backend, r.sink
                ),
                format!("{:.0} alarms/s", r.per_sec),
                rate_met,
            ));
        }
        goals.push((
            format!(
                "{} {}: live priority-1 p99 < 2 s while draining",
                r.backend, r.sink
            ),
            format!(
                "{} ms over {} rows{}",
                ms(r.live.p99_ms),
                r.live.n,
                if r.live_missing > 0 {
                    format!(", {} never arrived", r.live_missing)
                } else {
                    String::new()
                }
            ),
            live_met(r),
        ));
        println!(
            "| {} | {} | {} | {}{} | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
            r.backend,
            kind.describe(),
            r.channels,
            ms(r.drain_s),
            if r.timed_out { " (timed out)" } else { "" },
            r.per_sec,
            if rate_goal { yes(rate_met) } else { "n/a" },
            r.live.n,
            ms(r.live.p50_ms),
            ms(r.live.p99_ms),
            ms(r.live.max_ms),
            yes(live_met(r)),
            ms(r.live_confirmed.p99_ms),
        );
    }
    println!();
    println!(
        "| where the time went | startup ms | delivering s | between rounds s | round gaps | gap p50 ms | gap max ms | mean in flight | deliver p50 ms | deliver p99 ms | peer answer p50 ms | CPU bench | CPU peer | CPU postgres |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in runs {
        let b = &r.breakdown;
        println!(
            "| {} {} | {} | {:.2} | {:.2} | {} | {} | {} | {:.1} | {} | {} | {} | {:.0}% | {:.0}% | {:.0}% |",
            r.backend,
            r.sink,
            ms(b.startup_ms),
            b.delivering_s,
            b.between_rounds_s,
            b.round_gaps,
            ms(b.round_gap.p50_ms),
            ms(b.round_gap.max_ms),
            b.mean_in_flight,
            ms(b.deliver.p50_ms),
            ms(b.deliver.p99_ms),
            b.peer_answer.map_or_else(|| "-".into(), |s| ms(s.p50_ms)),
            b.cpu_bench_pct,
            b.cpu_peer_pct,
            b.cpu_postgres_pct,
        );
    }
    println!();
    println!(
        "| checks | seed s | acked s | stored s | at peer s | backlog at peer | duplicates | recorded delivered | live sent | failures |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in runs {
        println!(
            "| {} {} | {:.1} | {} | {} | {} | {} / {} | {} | {} | {} | {}{} |",
            r.backend,
            r.sink,
            r.seed_s,
            ms(r.acked_s),
            ms(r.stored_s),
            ms(r.peer_s),
            r.backlog_at_peer,
            r.backlog,
            r.duplicates_at_peer,
            r.recorded_delivered,
            r.live_sent,
            r.breakdown.failures,
            r.breakdown
                .first_failure
                .as_deref()
                .map(|f| format!(" ({f})"))
                .unwrap_or_default(),
        );
    }
    println!();
    for s in skipped {
        println!("Skipped: {s}");
    }
    if !skipped.is_empty() {
        println!();
    }
    println!("Goals:");
    for (what, got, met) in &goals {
        println!("* {what}: {got} — {}", if *met { "met" } else { "NOT met" });
    }
    let json = serde_json::json!({
        "backlog": opts.backlog,
        "live_rate": opts.live_rate,
        "policy": {
            "batch": p.batch,
            "per_channel": p.per_channel,
            "concurrency": p.concurrency,
        },
        "runs": runs,
        "skipped": skipped,
        "goals": goals.iter().map(|(w, g, m)| serde_json::json!({"goal": w, "got": g, "met": m})).collect::<Vec<_>>(),
    });
    let path = target_dir().join("bridge-bench.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    println!();
    println!("JSON: {}", path.display());
    Ok(())
}

fn main() -> Result<()> {
    let opts = Opts::parse()?;
    let base = target_dir().join("bridge-bench");
    std::fs::create_dir_all(&base)?;
    let have_sipp = have("sipp", "-v");
    let have_mosquitto = have("mosquitto", "-h");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut runs = Vec::new();
    let mut skipped = Vec::new();
    for backend in &opts.backends {
        if backend == "postgres"
            && let Err(e) = rt.block_on(TestDb::postgres())
        {
            let msg = format!("postgres: {e}");
            eprintln!("bridge: skipping {msg}");
            skipped.push(msg);
            continue;
        }
        for &kind in &opts.sinks {
            if kind.is_gb() && !have_sipp {
                let msg = format!(
                    "{backend} {}: sipp not installed (Debian package sip-tester)",
                    kind.label()
                );
                eprintln!("bridge: skipping {msg}");
                skipped.push(msg);
                continue;
            }
            if !kind.is_gb() && !have_mosquitto {
                let msg = format!(
                    "{backend} {}: mosquitto not installed (Debian package mosquitto)",
                    kind.label()
                );
                eprintln!("bridge: skipping {msg}");
                skipped.push(msg);
                continue;
            }
            let r = rt.block_on(Box::pin(run_one(&opts, backend, kind, &base)))?;
            runs.push(r);
        }
    }
    drop(rt);
    report(&opts, &runs, &skipped)?;
    let _ = std::io::stdout().flush();
    Ok(())
}
