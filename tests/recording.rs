//! Recording end to end: real RTSP cameras (GStreamer's RTSP server) into fMP4 segments on disk,
//! checked with ffprobe, indexed in the store, exported over HTTP.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use xueliang_tests::rtsp::{Codec, RtspOptions, RtspServer};
use xueliang_tests::*;

const TOKEN: &str = "recording-test-token-0123456789";

/// A node with one camera at `url`.
fn config(dir: &Path, url: &str, extra_camera: &str, extra_storage: &str) -> PathBuf {
    let extra_storage = if extra_storage.contains("min_free_bytes") {
        extra_storage.to_owned()
    } else {
        format!("min_free_bytes = \"1 MiB\"\n{extra_storage}")
    };
    let text = format!(
        r#"[node]
id = "rec-test"
data_dir = {dir:?}
shutdown_timeout_seconds = 20

[mqtt]
listen = "127.0.0.1:0"

[api]
listen = "127.0.0.1:0"

[[api.tokens]]
name = "t"
token = "{TOKEN}"
role = "admin"

[storage]
segment_seconds = 10
rpo_seconds = 2
{extra_storage}

[[cameras]]
id = "cam1"
url = "{url}"
stall_seconds = 4
{extra_camera}
"#,
        dir = dir.display().to_string()
    );
    write_file(dir, "node.toml", &text)
}

fn small(codec: Codec) -> RtspOptions {
    RtspOptions::default()
        .codec(codec)
        .size(320, 240)
        .fps(10)
        .gop(10)
        .bitrate_kbps(300)
}

/// Polls the camera until `pred` holds for its JSON, or panics with the last answer.
fn wait_camera(
    svc: &Service,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    let mut last = serde_json::Value::Null;
    while Instant::now() < deadline {
        let r = get(svc.addr(), "/api/v1/cameras/cam1", Some(TOKEN));
        if r.status == 200 {
            last = r.json();
            if pred(&last) {
                return last;
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("camera never became {what} within {timeout:?}; last: {last}");
}

fn recordings(svc: &Service) -> serde_json::Value {
    let now = xueliang_core::Clock::now(&xueliang_core::SystemClock);
    let from = ts(now.as_millis() - 3_600_000).to_rfc3339();
    let to = ts(now.as_millis() + 3_600_000).to_rfc3339();
    let r = get(
        svc.addr(),
        &format!("/api/v1/cameras/cam1/recordings?from={from}&to={to}"),
        Some(TOKEN),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

fn ms(v: &serde_json::Value) -> i64 {
    xueliang_core::Timestamp::parse_rfc3339(v.as_str().expect("time"))
        .expect("rfc3339")
        .as_millis()
}

#[derive(Debug)]
struct Probe {
    codec: String,
    width: u64,
    frames: u64,
    duration: f64,
}

fn probe(path: &Path) -> Probe {
    let out = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args([
            "-show_entries",
            "stream=codec_name,width,nb_read_frames:format=duration",
            "-of",
            "json",
        ])
        .arg(path)
        .output()
        .expect("run ffprobe");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.trim().is_empty(),
        "ffprobe {}: {err}",
        path.display()
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ffprobe json");
    let s = &v["streams"][0];
    Probe {
        codec: s["codec_name"].as_str().unwrap_or_default().to_owned(),
        width: s["width"].as_u64().unwrap_or(0),
        frames: s["nb_read_frames"]
            .as_str()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0),
        duration: v["format"]["duration"]
            .as_str()
            .and_then(|d| d.parse().ok())
            .unwrap_or(0.0),
    }
}

/// Checks every indexed segment against its file with ffprobe; returns (segments, frames).
fn check_segments(dir: &Path, rec: &serde_json::Value, codec: &str) -> (usize, u64) {
    let segs = rec["recordings"].as_array().expect("recordings");
    let mut frames = 0;
    for s in segs {
        let path = find_file(&dir.join("recordings"), s["id"].as_str().unwrap());
        let p = probe(&path);
        assert_eq!(p.codec, codec, "{}", path.display());
        assert_eq!(p.width, 320);
        assert_eq!(
            p.frames,
            s["frames"].as_u64().unwrap(),
            "frame count of {} vs index",
            path.display()
        );
        let indexed = (ms(&s["end"]) - ms(&s["start"])) as f64 / 1000.0;
        // Within one GOP (1 s here) of what the index says.
        assert!(
            (p.duration - indexed).abs() <= 1.0,
            "{}: ffprobe {} s, index {} s",
            path.display(),
            p.duration,
            indexed
        );
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            s["bytes"].as_u64().unwrap()
        );
        frames += p.frames;
    }
    (segs.len(), frames)
}

fn find_file(root: &Path, id: &str) -> PathBuf {
    fn walk(d: &Path, id: &str) -> Option<PathBuf> {
        for e in std::fs::read_dir(d).ok()? {
            let p = e.ok()?.path();
            if p.is_dir() {
                if let Some(f) = walk(&p, id) {
                    return Some(f);
                }
            } else if p.to_string_lossy().contains(id) {
                return Some(p);
            }
        }
        None
    }
    walk(root, id).unwrap_or_else(|| panic!("no file for segment {id} under {}", root.display()))
}

#[test]
fn h264_over_tcp_records_playable_segments_and_exports() {
    let server = RtspServer::start(&small(Codec::H264));
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &server.url(), "", "");
    let mut svc = Service::start(&cfg, &[]);
    let cam = wait_camera(&svc, Duration::from_secs(20), "online", |c| {
        c["state"] == "online"
    });
    assert_eq!(
        cam["codec"].as_str().map(|c| c.starts_with("avc1")),
        Some(true),
        "{cam}"
    );
    assert_eq!(cam["width"], 320);
    // Rates need a few seconds of frames.
    let cam = wait_camera(&svc, Duration::from_secs(10), "measured", |c| {
        c["fps"].as_f64().is_some()
    });
    let fps = cam["fps"].as_f64().unwrap();
    assert!((8.0..=12.0).contains(&fps), "fps {fps}");

    // Wait for at least two closed segments (the first is staggered shorter).
    let deadline = Instant::now() + Duration::from_secs(40);
    let rec = loop {
        let rec = recordings(&svc);
        if rec["recordings"].as_array().unwrap().len() >= 2 || Instant::now() > deadline {
            break rec;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let segs = rec["recordings"].as_array().unwrap().clone();
    assert!(segs.len() >= 2, "{rec}");
    // One session is one run on the timeline.
    let runs = rec["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "{rec}");
    assert!(runs[0]["segments"].as_u64().unwrap() >= segs.len() as u64);
    // Within one session consecutive segments touch.
    for w in segs.windows(2) {
        let gap = ms(&w[1]["start"]) - ms(&w[0]["end"]);
        assert!(
            gap.abs() <= 200,
            "segments {} and {} are {gap} ms apart",
            w[0]["id"],
            w[1]["id"]
        );
    }
    let (n, frames) = check_segments(dir.path(), &rec, "h264");

    // Export the whole span and play it end to end.
    let from = segs[0]["start"].as_str().unwrap();
    let to = segs[n - 1]["end"].as_str().unwrap();
    let path = format!("/api/v1/cameras/cam1/export.mp4?from={from}&to={to}");
    let full = get_raw(svc.addr(), &path, Some(TOKEN), &[]);
    assert_eq!(full.status, 200);
    assert_eq!(full.header("content-type"), Some("video/mp4"));
    assert_eq!(
        full.header("content-length").and_then(|l| l.parse().ok()),
        Some(full.body.len())
    );
    let out = dir.path().join("export.mp4");
    std::fs::write(&out, &full.body).unwrap();
    let p = probe(&out);
    assert_eq!(p.codec, "h264");
    assert_eq!(
        p.frames, frames,
        "export holds exactly the frames of the segments it covers"
    );
    let span = (ms(&segs[n - 1]["end"]) - ms(&segs[0]["start"])) as f64 / 1000.0;
    assert!(
        (p.duration - span).abs() <= 1.0,
        "export {} s vs span {span} s",
        p.duration
    );
    decode_clean(&out);

    // The export is on the audit trail with its span.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let audit = rt.block_on(async {
        let opts = xueliang_store::OpenOptions::sqlite(&dir.path().join("xueliang.db"));
        let store = xueliang_store::open(&opts, "rec-test".parse().unwrap())
            .await
            .unwrap();
        let a = store.list_audit(ts(0), 100).await.unwrap();
        store.close().await;
        a
    });
    let exp = audit
        .iter()
        .find(|a| a.action == "export")
        .expect("export audited");
    assert_eq!(
        (exp.actor.as_str(), exp.target.as_deref()),
        ("token:t", Some("camera:cam1"))
    );
    assert!(
        exp.detail
            .contains(&format!("\"bytes\":{}", full.body.len())),
        "{}",
        exp.detail
    );

    // Byte ranges are slices of the same file.
    let part = get_raw(
        svc.addr(),
        &path,
        Some(TOKEN),
        &[("Range", "bytes=100-1099")],
    );
    assert_eq!(part.status, 206);
    assert_eq!(
        part.header("content-range"),
        Some(format!("bytes 100-1099/{}", full.body.len()).as_str())
    );
    assert_eq!(part.body, full.body[100..1100]);
    let tail = get_raw(svc.addr(), &path, Some(TOKEN), &[("Range", "bytes=-500")]);
    assert_eq!(tail.body, full.body[full.body.len() - 500..]);
    let bad = get_raw(
        svc.addr(),
        &path,
        Some(TOKEN),
        &[("Range", &format!("bytes={}-", full.body.len()))],
    );
    assert_eq!(bad.status, 416);

    // A clean stop closes and indexes the segment in progress.
    svc.signal("TERM");
    assert!(
        svc.wait(Duration::from_secs(30)).success(),
        "{}",
        svc.log.join("\n")
    );
    let mut again = Service::start(&cfg, &[]);
    let after = recordings(&again);
    assert!(after["recordings"].as_array().unwrap().len() > n);
    // The time the service was down is a gap in the index, not silence.
    let down = after["gaps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["reason"] == "service stopped");
    assert!(down.is_some(), "{after}");
    check_segments(dir.path(), &after, "h264");
    again.signal("TERM");
    assert!(again.wait(Duration::from_secs(30)).success());
    let report = run_cli(&["fsck", "--config", cfg.to_str().unwrap()], &[]);
    assert!(
        report.0.success(),
        "fsck after a clean stop: {}{}",
        report.1,
        report.2
    );
}

fn decode_clean(path: &Path) {
    let out = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-f", "null", "-"])
        .output()
        .expect("run ffmpeg");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.trim().is_empty(),
        "decoding {}: {err}",
        path.display()
    );
}

#[test]
fn h265_over_udp_records() {
    if !xueliang_tests::rtsp::h265_available() {
        eprintln!("skipping: GStreamer's x265enc is not installed");
        return;
    }
    let server = RtspServer::start(&small(Codec::H265));
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &server.url(), "transport = \"udp\"", "");
    let mut svc = Service::start(&cfg, &[]);
    let cam = wait_camera(&svc, Duration::from_secs(30), "online", |c| {
        c["state"] == "online"
    });
    assert!(
        cam["codec"].as_str().unwrap().starts_with("hvc1")
            || cam["codec"].as_str().unwrap().starts_with("hev1"),
        "{cam}"
    );
    std::thread::sleep(Duration::from_secs(6));
    svc.signal("TERM");
    assert!(svc.wait(Duration::from_secs(30)).success());
    let again = Service::start(&cfg, &[]);
    let rec = recordings(&again);
    let (n, frames) = check_segments(dir.path(), &rec, "hevc");
    assert!(n >= 1 && frames >= 30, "{rec}");
}

#[test]
fn digest_auth_right_and_wrong() {
    let server = RtspServer::start(&small(Codec::H264).auth("operator", "s3cret-pass"));
    let dir = tempfile::tempdir().unwrap();
    let wrong = config(
        dir.path(),
        &server.url(),
        "username = \"operator\"\npassword = \"wrong-pass\"",
        "",
    );
    let svc = Service::start(&wrong, &[]);
    let cam = wait_camera(&svc, Duration::from_secs(20), "offline", |c| {
        c["state"] == "offline"
    });
    let err = cam["last_error"].as_str().unwrap_or_default();
    assert!(
        err.contains("401"),
        "last_error should name the refusal: {err}"
    );
    assert!(
        !svc.log.iter().any(|l| l.contains("wrong-pass")),
        "password logged"
    );
    drop(svc);

    let dir = tempfile::tempdir().unwrap();
    let right = config(
        dir.path(),
        &server.url(),
        "username = \"operator\"\npassword_file = \"cam.pass\"",
        "",
    );
    write_file(dir.path(), "cam.pass", "s3cret-pass\n");
    let svc = Service::start(&right, &[]);
    wait_camera(&svc, Duration::from_secs(20), "online", |c| {
        c["state"] == "online"
    });
    assert!(
        !svc.log.iter().any(|l| l.contains("s3cret-pass")),
        "password logged"
    );
}

#[test]
fn reconnects_after_the_camera_restarts_and_records_the_gap() {
    let mut server = RtspServer::start(&small(Codec::H264));
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &server.url(), "", "");
    let svc = Service::start(&cfg, &[]);
    wait_camera(&svc, Duration::from_secs(20), "online", |c| {
        c["state"] == "online"
    });
    std::thread::sleep(Duration::from_secs(3));
    server.kill();
    let cam = wait_camera(&svc, Duration::from_secs(15), "offline", |c| {
        c["state"] == "offline"
    });
    assert!(cam["last_error"].as_str().is_some(), "{cam}");
    std::thread::sleep(Duration::from_secs(2));
    let back = Instant::now();
    server.restart();
    // Backoff after one or two failures is capped at 1-2 s (+ DESCRIBE time).
    let cam = wait_camera(&svc, Duration::from_secs(15), "online again", |c| {
        c["state"] == "online"
    });
    assert!(back.elapsed() < Duration::from_secs(15));
    assert!(cam["reconnects"].as_u64().unwrap() >= 1, "{cam}");
    std::thread::sleep(Duration::from_secs(2));
    let rec = recordings(&svc);
    let gaps = rec["gaps"].as_array().unwrap();
    let gap = gaps
        .iter()
        .find(|g| !g["end"].is_null())
        .unwrap_or_else(|| panic!("no closed gap: {rec}"));
    let len = ms(&gap["end"]) - ms(&gap["start"]);
    assert!((2_000..20_000).contains(&len), "gap of {len} ms: {gap}");
}

#[test]
fn a_stalled_camera_goes_offline_and_comes_back() {
    let server = RtspServer::start(&small(Codec::H264));
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &server.url(), "", "");
    let svc = Service::start(&cfg, &[]);
    wait_camera(&svc, Duration::from_secs(20), "online", |c| {
        c["state"] == "online"
    });
    server.stall();
    let cam = wait_camera(&svc, Duration::from_secs(15), "offline (stalled)", |c| {
        c["state"] == "offline"
    });
    assert!(
        cam["last_error"].as_str().unwrap().contains("stalled"),
        "{cam}"
    );
    server.resume();
    wait_camera(
        &svc,
        Duration::from_secs(20),
        "online after the stall",
        |c| c["state"] == "online",
    );
}

/// Largest loss of video seen across kill -9 cycles, in milliseconds: the time between the
/// kill and the end of what was recovered. `XUELIANG_KILL_CYCLES` sets the number of cycles.
#[test]
fn kill_9_mid_segment_loses_at_most_the_recovery_point() {
    let cycles: usize = std::env::var("XUELIANG_KILL_CYCLES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(3);
    let server = RtspServer::start(&small(Codec::H264));
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &server.url(), "", "");
    let rpo_ms = 2_000;
    let mut losses = Vec::new();
    for cycle in 0..cycles {
        let mut svc = Service::start(&cfg, &[]);
        wait_camera(&svc, Duration::from_secs(20), "online", |c| {
            c["state"] == "online"
        });
        // Somewhere inside a 10 s segment, at a different point each cycle.
        std::thread::sleep(Duration::from_millis(
            3_000 + (cycle as u64 * 1_700) % 6_000,
        ));
        let killed_at = xueliang_core::Clock::now(&xueliang_core::SystemClock).as_millis();
        svc.kill9();
        drop(svc);
        let svc = Service::start(&cfg, &[]);
        let rec = recordings(&svc);
        let last_end = rec["recordings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| ms(&s["end"]))
            .max()
            .expect("a recovered segment");
        let loss = killed_at - last_end;
        losses.push(loss);
        check_segments(dir.path(), &rec, "h264");
        drop(svc);
    }
    losses.sort();
    eprintln!(
        "kill -9 cycles: {cycles}; video lost per crash (ms): {losses:?}; max {} ms; rpo {rpo_ms} ms",
        losses.last().unwrap()
    );
    // The recovery point plus the camera's own pipeline latency (encoder, network, one frame).
    assert!(
        *losses.last().unwrap() <= rpo_ms + 700,
        "lost {losses:?} ms"
    );
    // After a clean stop that follows the crashes, disk and index agree.
    let mut svc = Service::start(&cfg, &[]);
    svc.signal("TERM");
    assert!(svc.wait(Duration::from_secs(30)).success());
    let (st, out, err) = run_cli(&["fsck", "--config", cfg.to_str().unwrap()], &[]);
    assert!(st.success(), "fsck after recovery: {out}{err}");
}

fn free_bytes(path: &Path) -> u64 {
    let out = std::process::Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// A small file system: the free-space floor holds, the oldest unpinned go first, pinned stay.
#[test]
fn retention_keeps_the_floor_on_a_small_disk_and_spares_pinned_footage() {
    if !nix_is_root() {
        eprintln!("skipping: mounting a tmpfs needs root");
        return;
    }
    let server = RtspServer::start(
        &small(Codec::H264)
            .size(640, 360)
            .bitrate_kbps(2_000)
            .pattern("snow"),
    );
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("disk");
    std::fs::create_dir_all(&mnt).unwrap();
    let _mount = TmpfsMount::new(&mnt, "12m");
    let floor: u64 = 6 << 20;
    let storage = format!(
        "dir = {:?}\nmin_free_bytes = {floor}\n",
        mnt.display().to_string()
    );
    let cfg = config(dir.path(), &server.url(), "", &storage);
    let svc = Service::start(&cfg, &[]);
    wait_camera(&svc, Duration::from_secs(20), "online", |c| {
        c["state"] == "online"
    });

    // Pin the first closed segment as alarm footage (as the alarm engine would).
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        let rec = recordings(&svc);
        if let Some(s) = rec["recordings"].as_array().unwrap().first() {
            break s.clone();
        }
        assert!(Instant::now() < deadline, "no segment closed");
        std::thread::sleep(Duration::from_millis(300));
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let opts = xueliang_store::OpenOptions::sqlite(&dir.path().join("xueliang.db"));
        let store = xueliang_store::open(&opts, "rec-test".parse().unwrap())
            .await
            .unwrap();
        let n = store
            .pin_segments(
                "cam1",
                ts(ms(&first["start"])),
                ts(ms(&first["end"])),
                ts(i64::MAX / 4),
            )
            .await
            .unwrap();
        assert_eq!(n, 1);
        store.close().await;
    });

    // Record long enough to fill the disk several times over, watching free space.
    let mut min_free = u64::MAX;
    let until = Instant::now() + Duration::from_secs(45);
    while Instant::now() < until {
        min_free = min_free.min(free_bytes(&mnt));
        std::thread::sleep(Duration::from_millis(100));
    }
    let rec = recordings(&svc);
    let segs = rec["recordings"].as_array().unwrap();
    assert!(
        segs.iter().any(|s| s["id"] == first["id"]),
        "the pinned segment was deleted: {rec}"
    );
    let metrics = get(svc.addr(), "/metrics", None).body;
    let deleted: u64 = metrics
        .lines()
        .find(|l| l.starts_with("xueliang_retention_deleted_segments_total{camera=\"cam1\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        deleted >= 1,
        "retention deleted nothing; metrics:\n{metrics}"
    );
    // What is left besides the pin is the newest footage, with nothing missing in between.
    let unpinned: Vec<_> = segs.iter().filter(|s| s["id"] != first["id"]).collect();
    for w in unpinned.windows(2) {
        assert!(
            (ms(&w[1]["start"]) - ms(&w[0]["end"])).abs() <= 200,
            "hole in the kept footage: {rec}"
        );
    }
    // The floor held, give or take one fragment written between two retention checks.
    let slack = 2 * 2_000_000 / 8;
    assert!(
        min_free + slack >= floor,
        "free space fell to {min_free} bytes, floor {floor}"
    );
    eprintln!(
        "retention: min free {min_free} bytes (floor {floor}), deleted {deleted} segments, kept {}",
        segs.len()
    );
}

fn ts(ms: i64) -> xueliang_core::Timestamp {
    xueliang_core::Timestamp::from_millis(ms)
}

fn nix_is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false)
}

/// A tmpfs mounted for the life of a test.
struct TmpfsMount(PathBuf);

impl TmpfsMount {
    fn new(at: &Path, size: &str) -> Self {
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs at {}", at.display());
        TmpfsMount(at.to_owned())
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn broken_cameras_get_a_clear_error_and_the_service_keeps_running() {
    // Nothing listens on this port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let jpeg = RtspServer::start(&small(Codec::Jpeg));
    let garbage = BadSdpServer::start();
    let good = RtspServer::start(&small(Codec::H264));
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"[node]
id = "broken-test"
data_dir = {dir:?}
[mqtt]
listen = "127.0.0.1:0"
[api]
listen = "127.0.0.1:0"
[[api.tokens]]
name = "t"
token = "{TOKEN}"
role = "admin"
[storage]
min_free_bytes = "1 MiB"
[[cameras]]
id = "cam1"
url = "{good}"
sub_url = "{good}"
[[cameras]]
id = "unreachable"
url = "rtsp://127.0.0.1:{port}/cam"
[[cameras]]
id = "mjpeg"
url = "{jpeg}"
[[cameras]]
id = "bad-sdp"
url = "rtsp://127.0.0.1:{bad}/cam"
"#,
        dir = dir.path().display().to_string(),
        good = good.url(),
        jpeg = jpeg.url(),
        bad = garbage.port,
    );
    let cfg = write_file(dir.path(), "node.toml", &text);
    let svc = Service::start(&cfg, &[]);
    let cam = wait_camera(&svc, Duration::from_secs(20), "online", |c| {
        c["state"] == "online"
    });
    assert_eq!(cam["sub"]["state"], "online", "{cam}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let (unreachable, mjpeg) = loop {
        let all = get(svc.addr(), "/api/v1/cameras", Some(TOKEN)).json();
        let find = |id: &str| {
            all.as_array()
                .unwrap()
                .iter()
                .find(|c| c["id"] == id)
                .unwrap()
                .clone()
        };
        let (u, m) = (find("unreachable"), find("mjpeg"));
        if (u["state"] == "offline" && m["state"] == "offline") || Instant::now() > deadline {
            break (u, m);
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let ue = unreachable["last_error"].as_str().unwrap_or_default();
    assert!(
        ue.contains("DESCRIBE") && ue.to_lowercase().contains("refused"),
        "{unreachable}"
    );
    let me = mjpeg["last_error"].as_str().unwrap_or_default();
    assert!(
        me.contains("unsupported codec") && me.contains("video/jpeg"),
        "{mjpeg}"
    );
    // The good camera kept recording meanwhile, and the metrics say so per camera.
    let m = get(svc.addr(), "/metrics", None).body;
    let frames = m
        .lines()
        .find(|l| l.starts_with("xueliang_camera_frames_total{camera=\"cam1\",stream=\"main\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(frames > 0, "{m}");
    assert!(
        m.contains(
            "xueliang_camera_state{camera=\"unreachable\",state=\"offline\",stream=\"main\"} 1"
        ),
        "{m}"
    );
    assert!(
        m.contains("xueliang_camera_reconnects_total{camera=\"unreachable\",stream=\"main\"}"),
        "{m}"
    );
}

/// A camera whose firmware answers DESCRIBE with something that is not SDP. No real server
/// can be made to do this, so this one is hand-written.
struct BadSdpServer {
    port: u16,
}

impl BadSdpServer {
    fn start() -> Self {
        use std::io::{BufRead, BufReader, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for conn in l.incoming().take(50) {
                let Ok(mut conn) = conn else { continue };
                let Ok(read) = conn.try_clone() else { continue };
                let mut r = BufReader::new(read);
                let mut cseq = String::from("1");
                let mut method = String::new();
                let mut line = String::new();
                while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                    let t = line.trim_end().to_owned();
                    line.clear();
                    if method.is_empty() {
                        method = t.split(' ').next().unwrap_or_default().to_owned();
                    } else if let Some(v) = t.strip_prefix("CSeq:") {
                        cseq = v.trim().to_owned();
                    } else if t.is_empty() {
                        let body = "this is not an SDP description\r\n";
                        let reply = if method == "DESCRIBE" {
                            format!(
                                "RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
                                body.len()
                            )
                        } else {
                            format!(
                                "RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\nPublic: DESCRIBE, SETUP, PLAY\r\n\r\n"
                            )
                        };
                        let _ = conn.write_all(reply.as_bytes());
                        method.clear();
                    }
                }
            }
        });
        BadSdpServer { port }
    }
}
