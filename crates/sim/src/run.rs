//! The simulator as a program: a TOML file names the cameras (scene, size, codec, faults) and
//! the panic buttons; [`start`] encodes the scenes (cached), serves them and runs the buttons.
//!
//! ```toml
//! [rtsp]
//! listen = "127.0.0.1:8554"
//! # username = "admin"; password = "..."      (Digest auth on every camera)
//! # cache_dir = "/var/cache/xueliang-sim"     (encoded clips, reused across runs)
//!
//! [[cameras]]                # rtsp://HOST:PORT/cam/1 (and /cam/1/sub with `sub`)
//! scene = "demo"             # a preset: street, person_crossing, small_animal, ... (scene::PRESETS)
//! width = 1280
//! height = 720
//! fps = 25
//! codec = "h264"             # or "h265"
//! # bitrate_kbps = 2000; gop = 50; preset = "veryfast"
//! # count = 16               # this camera served N times (load runs): cam/1 .. cam/16
//! sub = { width = 640, height = 360 }
//! faults = [{ kind = "drop", at_seconds = 120 }, { kind = "stall", at_seconds = 30, for_seconds = 20 }]
//! # ground_truth = "truth-cam1.json"
//!
//! [buttons]                  # optional: see buttons::ButtonsConfig
//! broker = "127.0.0.1:1883"
//! count = 8
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use xueliang_core::media::VideoCodec;
use xueliang_core::shutdown::Shutdown;

use crate::buttons::{ButtonsConfig, Fleet};
use crate::scene::{SceneSpec, ground_truth};
use crate::{
    DEFAULT_SESSION_TIMEOUT, EncodeOptions, Fault, ServerConfig, SimCamera, SimError, bind,
    encode_cached,
};

/// The whole simulator file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    #[serde(default)]
    pub rtsp: RtspConfig,
    #[serde(default)]
    pub cameras: Vec<CameraSim>,
    pub buttons: Option<ButtonsConfig>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RtspConfig {
    pub listen: SocketAddr,
    pub username: Option<String>,
    pub password: Option<String>,
    pub cache_dir: Option<PathBuf>,
    pub session_timeout_seconds: u64,
}

impl Default for RtspConfig {
    fn default() -> Self {
        RtspConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8554)),
            username: None,
            password: None,
            cache_dir: None,
            session_timeout_seconds: DEFAULT_SESSION_TIMEOUT.as_secs(),
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CodecName {
    H264,
    H265,
}

impl From<CodecName> for VideoCodec {
    fn from(c: CodecName) -> Self {
        match c {
            CodecName::H264 => VideoCodec::H264,
            CodecName::H265 => VideoCodec::H265,
        }
    }
}

/// One simulated camera (or `count` identical ones).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraSim {
    pub scene: String,
    #[serde(default = "default_width")]
    pub width: u32,
    #[serde(default = "default_height")]
    pub height: u32,
    #[serde(default = "default_fps")]
    pub fps: u32,
    #[serde(default = "default_codec")]
    pub codec: CodecName,
    pub bitrate_kbps: Option<u32>,
    pub gop: Option<u32>,
    pub preset: Option<String>,
    #[serde(default = "default_count")]
    pub count: usize,
    pub sub: Option<SubStream>,
    #[serde(default)]
    pub faults: Vec<FaultSim>,
    /// Where to write the scene's ground truth (JSON), relative to the config file.
    pub ground_truth: Option<PathBuf>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubStream {
    pub width: u32,
    pub height: u32,
    pub fps: Option<u32>,
    pub bitrate_kbps: Option<u32>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum FaultSim {
    Drop {
        at_seconds: f64,
    },
    Stall {
        at_seconds: f64,
        for_seconds: f64,
    },
    NewSsrc {
        at_seconds: f64,
    },
    RefuseAuth {
        from_seconds: f64,
        until_seconds: f64,
    },
    SlowStart {
        delay_seconds: f64,
    },
}

fn default_width() -> u32 {
    1280
}
fn default_height() -> u32 {
    720
}
fn default_fps() -> u32 {
    25
}
fn default_codec() -> CodecName {
    CodecName::H264
}
fn default_count() -> usize {
    1
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

impl FaultSim {
    fn fault(&self) -> Fault {
        match *self {
            FaultSim::Drop { at_seconds } => Fault::Drop {
                at: secs(at_seconds),
            },
            FaultSim::Stall {
                at_seconds,
                for_seconds,
            } => Fault::Stall {
                at: secs(at_seconds),
                for_: secs(for_seconds),
            },
            FaultSim::NewSsrc { at_seconds } => Fault::NewSsrc {
                at: secs(at_seconds),
            },
            FaultSim::RefuseAuth {
                from_seconds,
                until_seconds,
            } => Fault::RefuseAuth {
                from: secs(from_seconds),
                until: secs(until_seconds),
            },
            FaultSim::SlowStart { delay_seconds } => Fault::SlowStart {
                delay: secs(delay_seconds),
            },
        }
    }
}

impl SimConfig {
    /// Parses a simulator file; `name` is what errors call it.
    pub fn parse(text: &str, name: &str) -> Result<SimConfig, SimError> {
        let cfg: SimConfig = toml::from_str(text).map_err(|e| SimError::Config {
            file: name.to_owned(),
            reason: e.to_string().trim_end().replace('\n', " "),
        })?;
        let mut problems = Vec::new();
        for (i, c) in cfg.cameras.iter().enumerate() {
            if SceneSpec::preset(&c.scene, c.width, c.height, c.fps).is_none() {
                problems.push(format!(
                    "cameras[{i}].scene: unknown scene {:?} (one of {})",
                    c.scene,
                    crate::scene::PRESETS.join(", ")
                ));
            }
            if c.width < 64 || c.height < 64 || c.width % 2 == 1 || c.height % 2 == 1 {
                problems.push(format!(
                    "cameras[{i}]: {}x{} is not an even size of at least 64x64",
                    c.width, c.height
                ));
            }
            if c.fps == 0 || c.fps > 60 {
                problems.push(format!("cameras[{i}].fps: {} is not in 1..=60", c.fps));
            }
            if c.count == 0 {
                problems.push(format!("cameras[{i}].count: must be at least 1"));
            }
        }
        if cfg.rtsp.username.is_some() != cfg.rtsp.password.is_some() {
            problems.push("rtsp: username and password go together".into());
        }
        if let Some(b) = &cfg.buttons
            && let Err(e) = b.validate()
        {
            problems.push(e.to_string());
        }
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(SimError::Config {
                file: name.to_owned(),
                reason: problems.join("; "),
            })
        }
    }

    /// Reads and parses a simulator file.
    pub fn load(path: &Path) -> Result<SimConfig, SimError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| SimError::Config {
            file: name.clone(),
            reason: format!("cannot read: {e}"),
        })?;
        SimConfig::parse(&text, &name)
    }

    /// How many cameras are served (counting `count`).
    pub fn camera_count(&self) -> usize {
        self.cameras.iter().map(|c| c.count).sum()
    }
}

/// A running simulator.
#[derive(Debug)]
pub struct Running {
    pub rtsp: SocketAddr,
    pub cameras: usize,
    pub fleet: Option<Arc<Fleet>>,
    server: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Waits for the server (it stops on the shutdown given to [`start`]) and the buttons.
    pub async fn stopped(self) {
        let _ = self.server.await;
        if let Some(f) = self.fleet {
            f.stop().await;
        }
    }
}

/// Where encoded clips are kept when the file does not say.
pub fn default_cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("xueliang-sim")
}

/// Encodes the scenes (on blocking threads; cached), binds the RTSP server and starts the
/// buttons. `base` resolves relative paths (ground truth files).
pub async fn start(cfg: SimConfig, base: &Path, shutdown: Shutdown) -> Result<Running, SimError> {
    let cache = cfg.rtsp.cache_dir.clone().unwrap_or_else(default_cache_dir);
    let mut cameras = Vec::new();
    for (i, c) in cfg.cameras.iter().enumerate() {
        let spec = SceneSpec::preset(&c.scene, c.width, c.height, c.fps).ok_or_else(|| {
            SimError::Camera {
                camera: i + 1,
                reason: format!("unknown scene {:?}", c.scene),
            }
        })?;
        let mut opts = EncodeOptions::new(c.codec.into());
        opts.bitrate_kbps = c.bitrate_kbps;
        opts.gop = c.gop;
        if let Some(p) = &c.preset {
            opts.preset = p.clone();
        }
        let started = std::time::Instant::now();
        let main = {
            let (spec, opts, cache) = (spec.clone(), opts.clone(), cache.clone());
            tokio::task::spawn_blocking(move || encode_cached(&spec, &opts, &cache))
                .await
                .map_err(|e| SimError::Scene {
                    reason: format!("encoder thread failed: {e}"),
                })??
        };
        let sub = match &c.sub {
            None => None,
            Some(s) => {
                let mut sspec =
                    SceneSpec::preset(&c.scene, s.width, s.height, s.fps.unwrap_or(c.fps))
                        .ok_or_else(|| SimError::Camera {
                            camera: i + 1,
                            reason: format!("unknown scene {:?}", c.scene),
                        })?;
                sspec.seed = spec.seed;
                let mut sopts = opts.clone();
                sopts.bitrate_kbps = s.bitrate_kbps;
                let cache = cache.clone();
                Some(Arc::new(
                    tokio::task::spawn_blocking(move || encode_cached(&sspec, &sopts, &cache))
                        .await
                        .map_err(|e| SimError::Scene {
                            reason: format!("encoder thread failed: {e}"),
                        })??,
                ))
            }
        };
        tracing::info!(camera = i + 1, scene = %c.scene, width = c.width, height = c.height, fps = c.fps, codec = ?c.codec, count = c.count, ms = started.elapsed().as_millis() as u64, "scene ready");
        if let Some(path) = &c.ground_truth {
            let path = base.join(path);
            let json = ground_truth(&spec).to_json().map_err(|e| SimError::Scene {
                reason: format!("cannot serialise the ground truth: {e}"),
            })?;
            std::fs::write(&path, json).map_err(|e| SimError::Config {
                file: path.display().to_string(),
                reason: format!("cannot write the ground truth: {e}"),
            })?;
        }
        let main = Arc::new(main);
        let faults: Vec<Fault> = c.faults.iter().map(FaultSim::fault).collect();
        for _ in 0..c.count {
            cameras.push(SimCamera {
                main: main.clone(),
                sub: sub.clone(),
                faults: faults.clone(),
            });
        }
    }
    let n = cameras.len();
    let server = bind(ServerConfig {
        listen: cfg.rtsp.listen,
        cameras,
        auth: cfg.rtsp.username.clone().zip(cfg.rtsp.password.clone()),
        session_timeout: Duration::from_secs(cfg.rtsp.session_timeout_seconds.max(1)),
    })
    .await?;
    let rtsp = server.local_addr();
    let server = tokio::spawn(server.run(shutdown.clone()));
    let fleet = match cfg.buttons {
        None => None,
        Some(b) => Some(Arc::new(Fleet::start(b, shutdown)?)),
    };
    Ok(Running {
        rtsp,
        cameras: n,
        fleet,
        server,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_file_parses() {
        let cfg = SimConfig::parse(
            r#"
[rtsp]
listen = "127.0.0.1:0"

[[cameras]]
scene = "demo"
width = 320
height = 240
fps = 10
codec = "h265"
count = 3
sub = { width = 160, height = 120 }
faults = [{ kind = "drop", at_seconds = 5 }, { kind = "stall", at_seconds = 1, for_seconds = 2 }]

[buttons]
broker = "127.0.0.1:1883"
count = 2
"#,
            "sim.toml",
        )
        .unwrap();
        assert_eq!(cfg.camera_count(), 3);
        assert_eq!(cfg.cameras[0].codec, CodecName::H265);
        assert_eq!(
            cfg.cameras[0].faults[1].fault(),
            Fault::Stall {
                at: Duration::from_secs(1),
                for_: Duration::from_secs(2)
            }
        );
        assert_eq!(cfg.buttons.unwrap().count, 2);
    }

    #[test]
    fn every_problem_is_named() {
        let e = SimConfig::parse(
            r#"
[[cameras]]
scene = "volcano"
width = 321
height = 240
fps = 0
"#,
            "sim.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("sim.toml: "), "{e}");
        assert!(
            e.contains("cameras[0].scene: unknown scene \"volcano\""),
            "{e}"
        );
        assert!(e.contains("321x240"), "{e}");
        assert!(e.contains("cameras[0].fps"), "{e}");
        let e = SimConfig::parse("[rtsp]\nlisten = \"x\"\nbogus = 1\n", "s.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("s.toml"), "{e}");
    }
}
