//! Benchmarks live in this package's `[[bench]]` targets; run them with
//! `cargo bench -p xueliang-benches`. Each prints criterion's estimates; compare the SQLite and
//! PostgreSQL lines of one run with each other rather than with numbers from another machine.
//!
//! The load runs (`load`, `alarms`) drive the release `xueliang` binary as a process; the
//! helpers here find it and the cargo target directory they write their results to.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The workspace's root directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("benches/ has a parent")
        .to_owned()
}

/// The cargo target directory: `CARGO_TARGET_DIR` if absolute, else the one the running bench
/// was built into (`target/<profile>/deps/NAME-HASH`), which follows a relative one too.
pub fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from)
        && d.is_absolute()
    {
        return d;
    }
    std::env::current_exe()
        .ok()
        .and_then(|e| e.ancestors().nth(3).map(Path::to_owned))
        .filter(|d| d.join("CACHEDIR.TAG").exists())
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// The release `xueliang` binary: `bin` when given, else `target/release/xueliang`, built
/// first when `build` is set.
pub fn xueliang_bin(bin: Option<&Path>, build: bool) -> Result<PathBuf, String> {
    if let Some(b) = bin {
        return Ok(b.to_owned());
    }
    let target = target_dir();
    if build {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let st = Command::new(cargo)
            .current_dir(workspace_root())
            .args(["build", "--release", "-p", "xueliang", "--bin", "xueliang"])
            .arg("--target-dir")
            .arg(&target)
            .status()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if !st.success() {
            return Err(format!("cargo build --release -p xueliang failed ({st})"));
        }
    }
    let b = target.join("release").join("xueliang");
    if !b.exists() {
        return Err(format!(
            "{} is missing: run `cargo build --release -p xueliang --bin xueliang`",
            b.display()
        ));
    }
    Ok(b)
}

/// CPU time (user + system) of a process, in seconds, from `/proc/PID/stat`.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let Some(rest) = s.rfind(')').map(|i| &s[i + 2..]) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // /proc counts in USER_HZ, 100 on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds of every process named `postgres` (the server's backends and helpers).
pub fn postgres_cpu_seconds() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        })
        .map(cpu_seconds)
        .sum()
}

/// The `p`-th percentile of an ascending slice (nearest rank); NaN when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Count, median, 99th percentile and maximum of a sample of milliseconds.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Summary {
    pub n: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Sorts `v` and summarizes it.
pub fn summarize(mut v: Vec<f64>) -> Summary {
    v.sort_by(f64::total_cmp);
    Summary {
        n: v.len(),
        p50_ms: percentile(&v, 50.0),
        p99_ms: percentile(&v, 99.0),
        max_ms: v.last().copied().unwrap_or(f64::NAN),
    }
}

/// Mosquitto on a free loopback port, with its configuration and log in `dir`; killed on drop.
#[derive(Debug)]
pub struct Broker {
    child: Child,
    pub port: u16,
}

impl Broker {
    /// `inflight`: Mosquitto's `max_inflight_messages`; `nodelay`: `set_tcp_nodelay`.
    pub fn start(
        dir: &Path,
        inflight: u32,
        nodelay: bool,
    ) -> Result<Broker, Box<dyn std::error::Error + Send + Sync>> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                 max_queued_messages 100000\nmax_inflight_messages {inflight}\n\
                 set_tcp_nodelay {nodelay}\nlog_dest stderr\nlog_type error\nlog_type warning\n"
            ),
        )?;
        let log = std::fs::File::create(dir.join("mosquitto.log"))?;
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("start mosquitto (Debian package mosquitto): {e}"))?;
        let b = Broker { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err(format!("mosquitto did not listen on {port}").into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(b)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `--backends` value: a comma-separated list of `sqlite` and `postgres`.
pub fn parse_backends(v: &str) -> Result<Vec<String>, String> {
    v.split(',')
        .map(|b| match b {
            "sqlite" | "postgres" => Ok(b.to_owned()),
            other => Err(format!("unknown backend {other:?}: sqlite or postgres")),
        })
        .collect()
}
