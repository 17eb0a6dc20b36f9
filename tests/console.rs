//! The operator console in a real browser: Debian's Chromium driven by Playwright
//! (`tests/browser/console.test.mjs`) against the built binary, two simulated cameras
//! (`xueliang sim`) and a panic button on a Mosquitto of the test's own.
//!
//! Needs `chromium`, `nodejs` and `npm` (`deploy/install-deps.sh test` installs them); the
//! first run does `npm ci` in `tests/browser`. `XUELIANG_SKIP_BROWSER=1` skips the test; a
//! missing browser or Node.js otherwise fails it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use xueliang_tests::broker::TestBroker;
use xueliang_tests::*;

const PROBE_TOKEN: &str = "console-probe-token-0123456789";
const IN_CAMERA: &str = "gate";
const OUT_CAMERA: &str = "square";
const DEVICE: &str = "btn-gate";
const USERS: [(&str, &str, &str, &[&str]); 3] = [
    ("zhang-admin", "admin", "admin-pass-Xl-2026", &[]),
    ("li-operator", "operator", "operator-pass-Xl-2026", &[]),
    (
        "wang-duty",
        "duty",
        "duty-pass-Xl-2026",
        &["--cameras", IN_CAMERA, "--devices", DEVICE],
    ),
];

fn chromium() -> PathBuf {
    std::env::var_os("XUELIANG_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/bin/chromium".into())
}

fn browser_dir() -> PathBuf {
    repo_root().join("tests").join("browser")
}

/// Node.js and Chromium, or a panic that says how to get them.
fn require_tools() {
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.as_ref().is_ok_and(|o| o.status.success()),
        "the console test needs Node.js (`node`): run `bash deploy/install-deps.sh test` \
         (Debian packages nodejs and npm), or set XUELIANG_SKIP_BROWSER=1 to skip it"
    );
    assert!(
        chromium().exists(),
        "the console test needs Chromium at {} (Debian package chromium): run \
         `bash deploy/install-deps.sh test`, set XUELIANG_CHROMIUM, or set \
         XUELIANG_SKIP_BROWSER=1 to skip it",
        chromium().display()
    );
    let dir = browser_dir();
    if !dir
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        let st = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--prefix"])
            .arg(&dir)
            .status()
            .expect("run npm (Debian package npm)");
        assert!(st.success(), "`npm ci --prefix tests/browser` failed");
    }
}

/// `xueliang sim` with two cameras (the demo's scenes, so the encoder cache is shared).
struct Sim {
    child: Child,
    port: u16,
}

impl Sim {
    fn start(dir: &Path) -> Sim {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cfg = write_file(
            dir,
            "sim.toml",
            &format!(
                r#"[rtsp]
listen = "127.0.0.1:{port}"

[[cameras]]
scene = "person_crossing"
width = 960
height = 540
fps = 15

[[cameras]]
scene = "lighting_step"
width = 960
height = 540
fps = 15
"#
            ),
        );
        let mut child = Command::new(bin())
            .args(["sim", "--config"])
            .arg(&cfg)
            .env("XUELIANG_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn xueliang sim");
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        // Encoding a scene the cache lacks takes a while on two cores.
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            match rx.recv_timeout(Duration::from_millis(500)) {
                Ok(l) if l.starts_with("simulator:") => break,
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    assert!(Instant::now() < deadline, "the simulator did not start");
                    if let Ok(Some(st)) = child.try_wait() {
                        panic!("the simulator exited: {st}");
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the simulator exited"),
            }
        }
        Sim { child, port }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(dir: &Path, broker: &TestBroker, rtsp: u16) -> PathBuf {
    let text = format!(
        r#"[node]
id = "console-test"
data_dir = {dir:?}
shutdown_timeout_seconds = 5
[mqtt]
mode = "external"
url = "{mqtt}"
[api]
listen = "127.0.0.1:0"
[[api.tokens]]
name = "probe"
token = "{PROBE_TOKEN}"
role = "admin"
[storage]
segment_seconds = 10
min_free_bytes = "1 MiB"
[alarms]
footage_pre_seconds = 40
footage_post_seconds = 20
[[cameras]]
id = "{IN_CAMERA}"
name = "校门 School gate"
url = "rtsp://127.0.0.1:{rtsp}/cam/1"
[[cameras]]
id = "{OUT_CAMERA}"
name = "广场 Square"
url = "rtsp://127.0.0.1:{rtsp}/cam/2"
[[devices]]
id = "{DEVICE}"
name = "小学传达室"
location = {{ lat = 29.2653, lon = 104.8762 }}
cameras = ["{IN_CAMERA}"]
[[devices]]
id = "btn-square"
name = "村委会"
location = {{ lat = 29.2671, lon = 104.8751 }}
cameras = ["{OUT_CAMERA}"]
"#,
        dir = dir.display().to_string(),
        mqtt = broker.url(),
    );
    write_file(dir, "node.toml", &text)
}

fn add_users(cfg: &Path) {
    for (name, role, password, extra) in USERS {
        let mut args = vec![
            "user",
            "add",
            "--config",
            cfg.to_str().unwrap(),
            "--username",
            name,
            "--role",
            role,
        ];
        args.extend_from_slice(extra);
        let (st, out, err) = run_cli(&args, &[("XUELIANG_USER_PASSWORD", password)]);
        assert!(st.success(), "user add {name}: {st}\n{out}\n{err}");
    }
}

/// Waits until `camera` has at least `secs` seconds of indexed recording.
fn wait_for_footage(svc: &Service, camera: &str, secs: i64) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let r = get(
            svc.addr(),
            &format!("/api/v1/cameras/{camera}/recordings"),
            Some(PROBE_TOKEN),
        );
        if r.status == 200 {
            let v = r.json();
            let ms: i64 = v["runs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|run| {
                    let s = xueliang_core::Timestamp::parse_rfc3339(run["start"].as_str()?).ok()?;
                    let e = xueliang_core::Timestamp::parse_rfc3339(run["end"].as_str()?).ok()?;
                    Some(e.as_millis() - s.as_millis())
                })
                .sum();
            if ms >= secs * 1000 {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{camera}: less than {secs} s recorded after 90 s: {}",
            r.body
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn press(port: u16) {
    let ts = xueliang_core::Clock::now(&xueliang_core::SystemClock).to_rfc3339();
    let payload = format!(
        r#"{{"seq": 1, "ts": "{ts}", "type": "panic", "battery": 87, "lat": 29.2653, "lon": 104.8762}}"#
    );
    let st = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-t", &format!("xueliang/v1/devices/{DEVICE}/alarm")])
        .args(["-m", &payload])
        .status()
        .expect("mosquitto_pub (Debian package mosquitto-clients)");
    assert!(st.success(), "mosquitto_pub failed");
}

#[test]
fn console_in_chromium() {
    if std::env::var("XUELIANG_SKIP_BROWSER").is_ok_and(|v| v == "1") {
        eprintln!("XUELIANG_SKIP_BROWSER=1: the console browser test is skipped");
        return;
    }
    require_tools();

    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start();
    let sim = Sim::start(dir.path());
    let cfg = config(dir.path(), &broker, sim.port);
    add_users(&cfg);
    let mut svc = Service::start(&cfg, &[]);
    svc.wait_for_log_seen("connected to the device broker", Duration::from_secs(30));
    wait_for_footage(&svc, IN_CAMERA, 15);

    let artifacts = repo_root().join("tests").join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let failures = std::env::temp_dir().join("xueliang-console-failures");
    let url = format!("http://{}", svc.addr());
    let user = |i: usize| format!("{}:{}", USERS[i].0, USERS[i].2);
    let mut node = Command::new("node")
        .arg(browser_dir().join("console.test.mjs"))
        .env("XL_URL", &url)
        .env("XL_ADMIN", user(0))
        .env("XL_OPERATOR", user(1))
        .env("XL_DUTY", user(2))
        .env("XL_IN_CAMERA", IN_CAMERA)
        .env("XL_OUT_CAMERA", OUT_CAMERA)
        .env("XL_DEVICE", DEVICE)
        .env("XL_CHROMIUM", chromium())
        .env("XL_ARTIFACTS", &artifacts)
        .env("XL_FAILURES", &failures)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn node");
    let (tx, rx) = mpsc::channel();
    let out = node.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut transcript = Vec::new();
    let status = loop {
        while let Ok(line) = rx.try_recv() {
            eprintln!("browser: {line}");
            if line.trim() == "XL:PRESS" {
                press(broker.port);
            }
            transcript.push(line);
        }
        if let Some(st) = node.try_wait().unwrap() {
            std::thread::sleep(Duration::from_millis(100));
            while let Ok(line) = rx.try_recv() {
                eprintln!("browser: {line}");
                transcript.push(line);
            }
            break st;
        }
        if Instant::now() > deadline {
            let _ = node.kill();
            panic!(
                "the browser test did not finish within 300 s:\n{}",
                transcript.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.success(),
        "the browser test failed ({status}); screenshots of the failure are in {}:\n{}",
        failures.display(),
        transcript.join("\n")
    );
    assert!(
        transcript.iter().any(|l| l.starts_with("ok - audit")),
        "the browser test did not reach the audit step:\n{}",
        transcript.join("\n")
    );
    drop(svc);
    drop(sim);
}
