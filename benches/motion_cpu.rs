//! Motion worker CPU per camera: decode + detect on the worker's own thread, in real time,
//! for 720p and 1080p H.264 cameras that are idle (the `street` scene) or active (a person
//! crossing every 12 s), reported as a share of one core.
//!
//! Each case encodes its scene once with the simulator (25 fps, a 2 s GOP, 2 Mb/s at 720p and
//! 4 Mb/s at 1080p, as village cameras are set up; cached under the target directory), then
//! feeds the frames to a worker at 25 fps for `--seconds` (default 20) after a 2 s warm-up,
//! and reads the worker thread's CPU time from `/proc/self/task/TID/schedstat` (nanoseconds;
//! `stat` ticks where schedstat is missing). The feeding thread is not counted: in the service
//! that is the ingest's work, not motion's.
//!
//! `cargo bench -p xueliang-benches --bench motion_cpu [-- --seconds N]`

#![allow(clippy::print_stdout, reason = "the report is this program's output")]

#[path = "../crates/record/tests/support/mod.rs"]
#[allow(dead_code, clippy::all)]
mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prometheus::Registry;
use prometheus::proto::MetricType;
use xueliang_core::Timestamp;
use xueliang_core::media::{VideoCodec, VideoFrame, VideoParams};
use xueliang_motion::decode::Decoder;
use xueliang_motion::detector::MotionEvent;
use xueliang_motion::worker::{self, MotionMetrics, MotionSink, Pushed, WorkerConfig};
use xueliang_sim::Clip;
use xueliang_sim::encode::{EncodeOptions, encode_cached};
use xueliang_sim::scene::SceneSpec;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const FPS: u32 = 25;
const WARMUP: Duration = Duration::from_secs(2);
/// The project's goal for an idle 720p camera, in % of one core.
const IDLE_720P_GOAL_PCT: f64 = 1.0;

struct Case {
    label: &'static str,
    width: u32,
    height: u32,
    kbps: u32,
    scene: &'static str,
    state: &'static str,
}

const CASES: &[Case] = &[
    Case {
        label: "720p",
        width: 1280,
        height: 720,
        kbps: 2_000,
        scene: "street",
        state: "idle",
    },
    Case {
        label: "720p",
        width: 1280,
        height: 720,
        kbps: 2_000,
        scene: "person_crossing",
        state: "active",
    },
    Case {
        label: "1080p",
        width: 1920,
        height: 1080,
        kbps: 4_000,
        scene: "street",
        state: "idle",
    },
    Case {
        label: "1080p",
        width: 1920,
        height: 1080,
        kbps: 4_000,
        scene: "person_crossing",
        state: "active",
    },
];

struct Row {
    label: &'static str,
    state: &'static str,
    secs: f64,
    cpu_pct: f64,
    decoded_fps: f64,
    analysed_fps: f64,
    decode_ms: f64,
    detect_ms: f64,
    full_rate_pct: f64,
    events: usize,
    dropped: f64,
    key_kb: f64,
    /// Key frames decoded back to back on this thread: the cost without idle gaps.
    key_hot_ms: f64,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("motion_cpu: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let mut seconds = 20u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seconds" => {
                seconds = args.next().ok_or("--seconds needs a value")?.parse()?;
            }
            // cargo bench passes --bench to every harness-less target.
            "--bench" => {}
            other => return Err(format!("unknown argument {other:?} (--seconds N)").into()),
        }
    }
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("motion-bench");
    let mut rows = Vec::new();
    for (i, case) in CASES.iter().enumerate() {
        let spec = SceneSpec::preset(case.scene, case.width, case.height, FPS)
            .ok_or("unknown scene preset")?;
        let mut opts = EncodeOptions::new(VideoCodec::H264);
        opts.bitrate_kbps = Some(case.kbps);
        opts.gop = Some(2 * FPS);
        eprintln!(
            "motion_cpu: {} {}: encoding {} (cached in {})",
            case.label,
            case.state,
            case.scene,
            cache.display()
        );
        let clip = encode_cached(&spec, &opts, &cache)?;
        eprintln!(
            "motion_cpu: {} {}: {} s in real time after a {} s warm-up",
            case.label,
            case.state,
            seconds,
            WARMUP.as_secs()
        );
        rows.push(measure(case, &clip, &format!("b{i}"), seconds)?);
    }

    println!();
    println!(
        "Motion worker CPU per camera (H.264, 25 fps, 2 s GOP; one decoder thread; {} s each)",
        seconds
    );
    println!(
        "{:<6} {:<7} {:>9} {:>9} {:>10} {:>10} {:>10} {:>10} {:>7} {:>8} {:>7} {:>11}",
        "stream",
        "state",
        "CPU %core",
        "decoded/s",
        "analysed/s",
        "decode ms",
        "detect ms",
        "full rate",
        "events",
        "dropped",
        "key kB",
        "key hot ms"
    );
    for r in &rows {
        println!(
            "{:<6} {:<7} {:>9.2} {:>9.1} {:>10.2} {:>10.2} {:>10.3} {:>9.0}% {:>7} {:>8} {:>7.0} {:>11.1}",
            r.label,
            r.state,
            r.cpu_pct,
            r.decoded_fps,
            r.analysed_fps,
            r.decode_ms,
            r.detect_ms,
            r.full_rate_pct,
            r.events,
            r.dropped,
            r.key_kb,
            r.key_hot_ms
        );
    }
    println!(
        "(decode ms per decoded frame, detect ms per analysed frame; full rate: share of frames \
         decoded; key kB: mean key frame size; key hot ms: key frames decoded back to back; \
         window {:.1} s)",
        rows.first().map_or(0.0, |r| r.secs)
    );
    if let Some(idle) = rows.iter().find(|r| r.label == "720p" && r.state == "idle") {
        let verdict = if idle.cpu_pct <= IDLE_720P_GOAL_PCT {
            "meets"
        } else {
            "misses"
        };
        println!(
            "Goal: <= {IDLE_720P_GOAL_PCT:.0}% of a core per idle 720p camera: {:.2}% {verdict} it \
             ({:.0} idle 720p cameras per core).",
            idle.cpu_pct,
            100.0 / idle.cpu_pct.max(0.001)
        );
    }
    Ok(())
}

/// Counts events only; the bench is about cost.
#[derive(Default)]
struct Count(std::sync::atomic::AtomicUsize);

impl MotionSink for Count {
    fn on_event(&self, _camera: &str, _ev: &MotionEvent) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

fn measure(case: &Case, clip: &Clip, camera: &str, seconds: u64) -> Result<Row> {
    let (config, rfc6381) = support::avcc(&clip.sps, &clip.pps);
    let params = Arc::new(VideoParams {
        codec: clip.codec,
        width: clip.width,
        height: clip.height,
        decoder_config: Bytes::from(config),
        rfc6381,
        pixel_aspect: None,
    });
    // Frames built up front, so the feeder only clones an Arc and stamps times.
    let units: Vec<(bool, Bytes)> = clip
        .units
        .iter()
        .map(|u| {
            let mut data = Vec::new();
            for nal in &u.nals {
                data.extend_from_slice(&(nal.len() as u32).to_be_bytes());
                data.extend_from_slice(nal);
            }
            (u.is_key, Bytes::from(data))
        })
        .collect();

    let keys: Vec<VideoFrame> = units
        .iter()
        .enumerate()
        .filter(|(_, (k, _))| *k)
        .map(|(i, (_, data))| VideoFrame {
            pts: i as i64 * 90_000 / i64::from(FPS),
            wall: Timestamp::from_millis(0),
            is_key: true,
            data: data.clone(),
            params: Arc::clone(&params),
            loss: 0,
        })
        .collect();
    let key_kb = keys.iter().map(|k| k.data.len()).sum::<usize>() as f64 / keys.len() as f64 / 1e3;
    let key_hot_ms = keyframes_back_to_back(&keys)?;

    let registry = Registry::new();
    let metrics = MotionMetrics::register(&registry)?;
    let sink = Arc::new(Count::default());
    let handle = worker::spawn(camera, WorkerConfig::default(), sink.clone(), metrics)?;
    let tid = find_thread(&format!("motion-{camera}")).ok_or("worker thread not found")?;

    let frame_ticks = 90_000 / i64::from(FPS);
    let wall0 = Timestamp::from_millis(1_790_000_000_000);
    let period = Duration::from_secs(1) / FPS;
    let start = Instant::now();
    let end = start + WARMUP + Duration::from_secs(seconds);
    let mut window: Option<(Instant, u64, Snapshot)> = None;
    let mut i: u64 = 0;
    loop {
        let due = start + period * u32::try_from(i)?;
        if due >= end {
            break;
        }
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        if window.is_none() && due >= start + WARMUP {
            window = Some((
                Instant::now(),
                thread_cpu_ns(tid).ok_or("cannot read the worker's CPU time")?,
                Snapshot::read(&registry, camera),
            ));
        }
        let (is_key, data) = &units[(i % units.len() as u64) as usize];
        let pts = (1 << 32) + i as i64 * frame_ticks;
        let frame = VideoFrame {
            pts,
            wall: wall0.saturating_add_millis(i as i64 * 1000 / i64::from(FPS)),
            is_key: *is_key,
            data: data.clone(),
            params: Arc::clone(&params),
            loss: 0,
        };
        if handle.push(Arc::new(frame)) == Pushed::Closed {
            return Err("the worker stopped".into());
        }
        i += 1;
    }
    // Let the last frame's work land in the window.
    std::thread::sleep(Duration::from_millis(100));
    let (t0, cpu0, s0) = window.ok_or("no measurement window")?;
    let cpu1 = thread_cpu_ns(tid).ok_or("cannot read the worker's CPU time")?;
    let s1 = Snapshot::read(&registry, camera);
    let secs = t0.elapsed().as_secs_f64();
    handle.stop();

    let d = |f: fn(&Snapshot) -> f64| f(&s1) - f(&s0);
    let decoded = d(|s| s.decoded);
    let analysed = d(|s| s.analysed);
    let frames = secs * f64::from(FPS);
    Ok(Row {
        label: case.label,
        state: case.state,
        secs,
        cpu_pct: 100.0 * (cpu1 - cpu0) as f64 / 1e9 / secs,
        decoded_fps: decoded / secs,
        analysed_fps: analysed / secs,
        decode_ms: 1e3 * d(|s| s.decode_s) / decoded.max(1.0),
        detect_ms: 1e3 * d(|s| s.detect_s) / analysed.max(1.0),
        full_rate_pct: (100.0 * decoded / frames).min(100.0),
        events: sink.0.load(std::sync::atomic::Ordering::Relaxed),
        dropped: s1.dropped,
        key_kb,
        key_hot_ms,
    })
}

/// CPU ms per key frame when only key frames are decoded, one after the other (warm caches,
/// no idle gaps), on this thread.
fn keyframes_back_to_back(keys: &[VideoFrame]) -> Result<f64> {
    const ROUNDS: usize = 4;
    let first = keys.first().ok_or("no key frames")?;
    let mut dec = Decoder::new(&first.params)?;
    dec.set_keyframes_only(true);
    for k in keys {
        dec.decode(k)?;
    }
    let cpu = || proc_cpu_ns("/proc/thread-self").ok_or("cannot read this thread's CPU time");
    let t0 = cpu()?;
    for _ in 0..ROUNDS {
        for k in keys {
            dec.decode(k)?;
        }
    }
    Ok((cpu()? - t0) as f64 / 1e6 / (ROUNDS * keys.len()) as f64)
}

/// The worker's counters at one moment.
struct Snapshot {
    decoded: f64,
    analysed: f64,
    decode_s: f64,
    detect_s: f64,
    dropped: f64,
}

impl Snapshot {
    fn read(registry: &Registry, camera: &str) -> Snapshot {
        let families = registry.gather();
        let get = |name: &str, sum: bool| -> f64 {
            families
                .iter()
                .filter(|f| f.name() == name)
                .flat_map(|f| f.get_metric().iter().map(move |m| (f.get_field_type(), m)))
                .filter(|(_, m)| {
                    m.get_label()
                        .iter()
                        .any(|l| l.name() == "camera" && l.value() == camera)
                })
                .map(|(kind, m)| match (kind, sum) {
                    (MetricType::COUNTER, _) => m.get_counter().get_value(),
                    (MetricType::HISTOGRAM, true) => m.get_histogram().get_sample_sum(),
                    (MetricType::HISTOGRAM, false) => m.get_histogram().get_sample_count() as f64,
                    _ => 0.0,
                })
                .sum()
        };
        Snapshot {
            decoded: get("xueliang_motion_frames_decoded_total", false),
            analysed: get("xueliang_motion_frames_analysed_total", false),
            decode_s: get("xueliang_motion_decode_seconds", true),
            detect_s: get("xueliang_motion_detect_seconds", true),
            dropped: get("xueliang_motion_dropped_frames_total", false),
        }
    }
}

/// The id of this process's thread called `name` (as the kernel keeps it: 15 bytes at most).
fn find_thread(name: &str) -> Option<u32> {
    let name = &name[..name.len().min(15)];
    // The thread names itself right after it starts.
    for _ in 0..100 {
        for entry in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            if comm.trim_end() == name {
                return entry.file_name().to_str()?.parse().ok();
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// CPU time of thread `tid` of this process in nanoseconds: schedstat's run time, or
/// utime + stime from `stat` (in clock ticks, assumed 100 Hz) where schedstat is missing.
fn thread_cpu_ns(tid: u32) -> Option<u64> {
    proc_cpu_ns(&format!("/proc/self/task/{tid}"))
}

/// [`thread_cpu_ns`] for a `/proc` directory of one thread.
fn proc_cpu_ns(dir: &str) -> Option<u64> {
    if let Ok(s) = std::fs::read_to_string(format!("{dir}/schedstat"))
        && let Some(ns) = s.split_whitespace().next().and_then(|v| v.parse().ok())
    {
        return Some(ns);
    }
    let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks * 10_000_000)
}
