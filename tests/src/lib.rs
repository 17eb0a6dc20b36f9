//! Helpers for end-to-end tests: find the built binary, run it, talk HTTP to it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub mod broker;
pub mod rtsp;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

/// The `xueliang` binary: `XUELIANG_BIN`, else the one cargo built beside this test.
pub fn bin() -> PathBuf {
    if let Ok(p) = std::env::var("XUELIANG_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> -> target/<profile>/xueliang
    let p = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("xueliang");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (deploy/test.sh does)",
        p.display()
    );
    p
}

/// `xueliang ARGS`, to completion: (exit status, stdout, stderr).
pub fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String, String) {
    let out = Command::new(bin())
        .args(args)
        .envs(env.iter().copied())
        .env_remove("XUELIANG_LOG")
        .output()
        .expect("run xueliang");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A running service whose JSON log lines are collected.
#[derive(Debug)]
pub struct Service {
    child: Child,
    lines: mpsc::Receiver<String>,
    pub log: Vec<String>,
    pub addr: Option<SocketAddr>,
}

impl Service {
    /// Starts `xueliang run --config FILE` and waits for its "api listening" line.
    pub fn start(config: &Path, env: &[(&str, &str)]) -> Service {
        Self::start_args(
            &["run", "--config", config.to_str().expect("utf-8 path")],
            env,
        )
    }

    pub fn start_args(args: &[&str], env: &[(&str, &str)]) -> Service {
        let mut child = Command::new(bin())
            .args(args)
            .envs(env.iter().copied())
            .env("XUELIANG_LOG_FORMAT", "json")
            .env("XUELIANG_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn xueliang");
        let (tx, rx) = mpsc::channel();
        for stream in [
            Box::new(child.stderr.take().expect("stderr")) as Box<dyn Read + Send>,
            Box::new(child.stdout.take().expect("stdout")),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let mut s = Service {
            child,
            lines: rx,
            log: Vec::new(),
            addr: None,
        };
        let line = s.wait_for_log("api listening", Duration::from_secs(60));
        let v: serde_json::Value = serde_json::from_str(&line).expect("json log line");
        s.addr = Some(
            v["addr"]
                .as_str()
                .expect("addr field")
                .parse()
                .expect("socket addr"),
        );
        s
    }

    /// Like [`Service::wait_for_log`], but a line already read (e.g. while waiting for the API
    /// to listen, which start-up does not order against other tasks) counts too.
    pub fn wait_for_log_seen(&mut self, needle: &str, timeout: Duration) -> String {
        if let Some(line) = self.log.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        self.wait_for_log(needle, timeout)
    }

    /// Waits for a log line containing `needle`; panics with the log so far on timeout or exit.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                Ok(line) => {
                    self.log.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if Instant::now() >= deadline {
                        panic!(
                            "no log line with {needle:?} within {timeout:?}; log:\n{}",
                            self.log.join("\n")
                        );
                    }
                    if let Ok(Some(st)) = self.child.try_wait() {
                        panic!(
                            "xueliang exited ({st}) before logging {needle:?}; log:\n{}",
                            self.log.join("\n")
                        );
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!(
                        "xueliang closed its output before logging {needle:?}; log:\n{}",
                        self.log.join("\n")
                    );
                }
            }
        }
    }

    /// Moves the lines logged so far into [`Service::log`], without waiting for more.
    pub fn collect_log(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.log.push(line);
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr.expect("service address")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: the process gets no chance to clean up, as in a power cut or OOM kill.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a signal by name (`TERM`, `INT`) with kill(1).
    pub fn signal(&self, name: &str) {
        let st = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -{name} failed");
    }

    /// Waits for exit; collects the remaining log.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            while let Ok(line) = self.lines.try_recv() {
                self.log.push(line);
            }
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                std::thread::sleep(Duration::from_millis(50));
                while let Ok(line) = self.lines.try_recv() {
                    self.log.push(line);
                }
                return st;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!(
                    "xueliang did not exit within {timeout:?}; log:\n{}",
                    self.log.join("\n")
                );
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

/// A minimal HTTP/1.1 response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` with optional bearer token over a fresh connection, body as text.
pub fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> Response {
    let raw = get_raw(addr, path, token, &[]);
    Response {
        status: raw.status,
        headers: raw.headers,
        body: String::from_utf8_lossy(&raw.body).into_owned(),
    }
}

/// Writes `text` to `name` in `dir` and returns the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write file");
    p
}

/// What a service's SQLite holds: every incident, and every signal linked to one.
pub fn stored_alarms(
    dir: &Path,
    node: &str,
) -> (Vec<xueliang_store::Incident>, Vec<xueliang_store::Signal>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let opts = xueliang_store::OpenOptions::sqlite(&dir.join("xueliang.db"));
        let store = xueliang_store::open(&opts, node.parse().expect("node id"))
            .await
            .expect("open the service's database");
        let incidents = store
            .list_incidents(&xueliang_store::IncidentFilter {
                limit: 10_000,
                ..Default::default()
            })
            .await
            .expect("list incidents");
        let mut signals = Vec::new();
        for i in &incidents {
            signals.extend(store.incident_signals(i.id).await.expect("signals"));
        }
        store.close().await;
        (incidents, signals)
    })
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a loopback port")
}

/// An example configuration with its data directory, API and broker addresses moved for a test.
pub fn example_config(name: &str, data_dir: &Path) -> String {
    let text =
        std::fs::read_to_string(repo_root().join("config").join(name)).expect("read example");
    text.lines()
        .map(|l| {
            if l.starts_with("data_dir = ") {
                format!("data_dir = {:?}", data_dir.display().to_string())
            } else if l.starts_with("listen = \"127.0.0.1:8080\"") {
                "listen = \"127.0.0.1:0\"".to_owned()
            } else if l.starts_with("listen = \"0.0.0.0:1883\"") {
                // The embedded broker: a port of the system's choosing, never the machine's
                // Mosquitto's.
                "listen = \"127.0.0.1:0\"".to_owned()
            } else if l.starts_with("url = \"mqtt://skynet") {
                // The city's broker and platform are placeholders: point them at a loopback port
                // nothing answers on, so a test never reaches outside the machine.
                format!("url = \"mqtt://127.0.0.1:{}\"", free_port())
            } else if l.starts_with("server_addr = ") {
                format!("server_addr = \"127.0.0.1:{}\"", free_port())
            } else if l.starts_with("local_listen = ") {
                format!("local_listen = \"127.0.0.1:{}\"", free_port())
            } else if l.starts_with("dir = ") {
                format!(
                    "dir = {:?}",
                    data_dir.join("recordings").display().to_string()
                )
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A response with a binary body.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` with optional bearer token and extra headers; binary-safe, any body size.
pub fn get_raw(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
) -> RawResponse {
    request_raw(addr, "GET", path, token, headers, None)
}

/// `POST path` with a JSON body.
pub fn post_json(addr: SocketAddr, path: &str, token: Option<&str>, body: &str) -> Response {
    let raw = request_raw(
        addr,
        "POST",
        path,
        token,
        &[("Content-Type", "application/json")],
        Some(body),
    );
    Response {
        status: raw.status,
        headers: raw.headers,
        body: String::from_utf8_lossy(&raw.body).into_owned(),
    }
}

/// One HTTP/1.1 request over a fresh connection.
pub fn request_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> RawResponse {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(b) = body {
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body.unwrap_or_default());
    s.write_all(req.as_bytes()).expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header end");
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut body = raw[end + 4..].to_vec();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    if headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"))
    {
        body = dechunk_bytes(&body);
    }
    RawResponse {
        status,
        headers,
        body,
    }
}

fn dechunk_bytes(mut s: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = s.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&s[..eol])
            .ok()
            .and_then(|h| usize::from_str_radix(h.trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = eol + 2;
        out.extend_from_slice(&s[start..start + size]);
        s = &s[(start + size + 2).min(s.len())..];
    }
    out
}
