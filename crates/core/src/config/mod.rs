//! The typed, strict TOML configuration: types, loading with every error reported, and secrets.
//!
//! Loading has three passes: TOML syntax, types (one error, with its line), then unknown keys and
//! whole-file validation, which report every problem at once, each with its key path and line.

mod load;
pub mod path;
mod secret;
mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

pub use load::{ConfigError, ConfigErrors, Env, NoEnv, ProcessEnv, load_file, load_str};
pub use secret::Secret;

/// The whole configuration file.
#[derive(Clone, Debug, Deserialize)]
pub struct Config {
    pub node: NodeConfig,
    #[serde(default)]
    pub database: DatabaseConfig,
    #[serde(default)]
    pub mqtt: MqttConfig,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub storage: StorageConfig,
    #[serde(default)]
    pub alarms: AlarmsConfig,
    #[serde(default)]
    pub cameras: Vec<CameraConfig>,
    #[serde(default)]
    pub devices: Vec<DeviceConfig>,
    #[serde(default)]
    pub bridge: BridgeConfig,
}

/// `[node]`: who this node is and where it keeps its files.
#[derive(Clone, Debug, Deserialize)]
pub struct NodeConfig {
    /// Stable id, part of MQTT topics and of every exported record.
    pub id: String,
    /// Human name shown to operators, e.g. "沿滩镇 01".
    pub name: Option<String>,
    /// Database, recordings (unless `storage.dir`) and state live here.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// How long a graceful shutdown may take before the process exits anyway.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout_seconds: u32,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/xueliang")
}
fn default_shutdown_timeout() -> u32 {
    15
}

/// `[database]`: SQLite (default, under data_dir) or PostgreSQL.
#[derive(Clone, Debug, Deserialize)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` or `postgres://USER@HOST:PORT/DB`; no password in it.
    pub url: Option<String>,
    pub password: Option<Secret>,
    pub password_file: Option<PathBuf>,
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// SQLite busy timeout and PostgreSQL acquire timeout.
    #[serde(default = "default_busy_timeout_ms")]
    pub busy_timeout_ms: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: None,
            password: None,
            password_file: None,
            max_connections: default_max_connections(),
            busy_timeout_ms: default_busy_timeout_ms(),
        }
    }
}
fn default_max_connections() -> u32 {
    8
}
fn default_busy_timeout_ms() -> u32 {
    5000
}

/// Which database a resolved configuration points at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DatabaseTarget {
    Sqlite { path: PathBuf },
    Postgres { url: String },
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MqttMode {
    /// The service runs its own broker (edge box).
    #[default]
    Embedded,
    /// The service connects to Mosquitto, EMQX or another broker (monitoring centre).
    External,
}

impl MqttMode {
    pub fn as_str(self) -> &'static str {
        match self {
            MqttMode::Embedded => "embedded",
            MqttMode::External => "external",
        }
    }
}

/// `[mqtt]`: where panic buttons publish.
#[derive(Clone, Debug, Deserialize)]
pub struct MqttConfig {
    #[serde(default)]
    pub mode: MqttMode,
    /// Embedded broker: address to listen on.
    pub listen: Option<String>,
    /// External broker: `mqtt://host:port`, no credentials in it (the devices' broker is
    /// reached in plain MQTT: on the box itself or over the village network).
    pub url: Option<String>,
    /// Stable client id for the persistent session; defaults to `xueliang-{node.id}`.
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub password_file: Option<PathBuf>,
    #[serde(default = "default_keepalive")]
    pub keepalive_seconds: u32,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            mode: MqttMode::Embedded,
            listen: None,
            url: None,
            client_id: None,
            username: None,
            password: None,
            password_file: None,
            keepalive_seconds: default_keepalive(),
        }
    }
}
fn default_keepalive() -> u32 {
    30
}

impl MqttConfig {
    /// The embedded broker's address; loopback only unless configured (devices on the LAN need
    /// `listen = "0.0.0.0:1883"`).
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
            .as_deref()
            .and_then(|l| l.parse().ok())
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 1883)))
    }
}

/// `[alarms]`: how presses, device supervision and camera faults become incidents.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct AlarmsConfig {
    /// A press this soon after a device's last one joins its open incident.
    pub join_seconds: u32,
    /// This many presses within `burst_seconds` raise the incident's priority.
    pub burst_presses: u32,
    pub burst_seconds: u32,
    /// Not acknowledged within this time: escalated and notified again.
    pub ack_timeout_seconds: u32,
    /// Devices send a heartbeat this often; `missed_heartbeats` missed ones mean offline.
    pub heartbeat_seconds: u32,
    pub missed_heartbeats: u32,
    pub low_battery_percent: u8,
    /// Footage attached to a press: from this long before it...
    pub footage_pre_seconds: u32,
    /// ...to this long after the last press, extended while the incident is open...
    pub footage_post_seconds: u32,
    /// ...and never longer than this in all.
    pub footage_max_seconds: u32,
    /// Attached footage is kept from retention until its incident is resolved and this many
    /// days have passed.
    pub footage_hold_days: u32,
    /// A camera offline this long raises a `camera_offline` incident; 0 turns that off.
    pub camera_offline_seconds: u32,
    /// The event stream (`/api/v1/events`) can be resumed this far back.
    pub events_keep_days: u32,
    /// Night, for `motion.incidents = "night"`: from this hour to that one, local time.
    pub night_start_hour: u8,
    pub night_end_hour: u8,
    /// Local time's offset from UTC (China: +480).
    pub utc_offset_minutes: i32,
}

impl Default for AlarmsConfig {
    fn default() -> Self {
        AlarmsConfig {
            join_seconds: 120,
            burst_presses: 3,
            burst_seconds: 60,
            ack_timeout_seconds: 30,
            heartbeat_seconds: 60,
            missed_heartbeats: 3,
            low_battery_percent: 20,
            footage_pre_seconds: 60,
            footage_post_seconds: 180,
            footage_max_seconds: 900,
            footage_hold_days: 30,
            camera_offline_seconds: 300,
            events_keep_days: 7,
            night_start_hour: 19,
            night_end_hour: 7,
            utc_offset_minutes: 480,
        }
    }
}

/// `[api]`: the HTTP listener and its machine tokens.
#[derive(Clone, Debug, Deserialize)]
pub struct ApiConfig {
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Require a token on /metrics too.
    #[serde(default)]
    pub metrics_auth: bool,
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// Serve HTTPS from these PEM files instead of plain HTTP (plain HTTP on loopback is the
    /// default). Relative paths are resolved against the configuration file's directory.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Browser sessions end after this long without a request.
    #[serde(default = "default_session_idle")]
    pub session_idle_minutes: u32,
}

/// `[api] tls = { cert_file, key_file }`: the certificate chain and its private key, PEM.
#[derive(Clone, Debug, Deserialize)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

fn default_session_idle() -> u32 {
    12 * 60
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: default_listen(),
            metrics_auth: false,
            tokens: Vec::new(),
            tls: None,
            session_idle_minutes: default_session_idle(),
        }
    }
}
fn default_listen() -> String {
    "127.0.0.1:8080".into()
}

impl ApiConfig {
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listen.parse().ok()
    }
}

#[derive(
    Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Duty,
    Operator,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Duty => "duty",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

/// `[[api.tokens]]`: a bearer token for a machine client.
#[derive(Clone, Debug, Deserialize)]
pub struct TokenConfig {
    pub name: String,
    pub token: Option<Secret>,
    pub token_file: Option<PathBuf>,
    pub role: Role,
    /// Camera ids this token may see; `"*"` for all.
    #[serde(default = "star")]
    pub cameras: Vec<String>,
    /// Device ids this token may see; `"*"` for all.
    #[serde(default = "star")]
    pub devices: Vec<String>,
}

fn star() -> Vec<String> {
    vec!["*".into()]
}

/// `[storage]`: where and how long recordings are kept.
#[derive(Clone, Debug, Deserialize)]
pub struct StorageConfig {
    /// Defaults to `{data_dir}/recordings`.
    pub dir: Option<PathBuf>,
    #[serde(default = "default_segment_seconds")]
    pub segment_seconds: u32,
    /// Most video that may be lost on power loss.
    #[serde(default = "default_rpo_seconds")]
    pub rpo_seconds: u32,
    #[serde(default = "default_retention_days")]
    pub retention_days: u32,
    /// Upper bound on recordings on disk, e.g. `"500 GiB"` or a byte count.
    pub max_bytes: Option<ByteSize>,
    /// Space that must stay free on the recordings' file system.
    #[serde(default = "default_min_free")]
    pub min_free_bytes: ByteSize,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            dir: None,
            segment_seconds: default_segment_seconds(),
            rpo_seconds: default_rpo_seconds(),
            retention_days: default_retention_days(),
            max_bytes: None,
            min_free_bytes: default_min_free(),
        }
    }
}
fn default_segment_seconds() -> u32 {
    60
}
fn default_rpo_seconds() -> u32 {
    2
}
fn default_retention_days() -> u32 {
    30
}
fn default_min_free() -> ByteSize {
    ByteSize(2 << 30)
}

/// A byte count written as an integer or as `"500 GiB"`, `"2GB"`, `"64 MiB"`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let num: f64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a size; write e.g. \"500 GiB\" or 1073741824"))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1_000,
            "kib" | "k" => 1 << 10,
            "mb" => 1_000_000,
            "mib" | "m" => 1 << 20,
            "gb" => 1_000_000_000,
            "gib" | "g" => 1 << 30,
            "tb" => 1_000_000_000_000,
            "tib" | "t" => 1 << 40,
            u => {
                return Err(format!(
                    "unknown size unit {u:?}; use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB"
                ));
            }
        };
        Ok(ByteSize((num * mult as f64) as u64))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => ByteSize::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// RTP interleaved in the RTSP TCP connection: works through NAT and loses nothing.
    #[default]
    Tcp,
    Udp,
}

/// `[[cameras]]`: one RTSP camera.
#[derive(Clone, Debug, Deserialize)]
pub struct CameraConfig {
    pub id: String,
    pub name: Option<String>,
    /// Main stream, `rtsp://host:port/path`, no credentials in it.
    pub url: String,
    /// Optional lower-resolution stream used for motion detection and grid tiles.
    pub sub_url: Option<String>,
    #[serde(default)]
    pub transport: Transport,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub password_file: Option<PathBuf>,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "yes")]
    pub record: bool,
    /// Overrides `storage.retention_days` for this camera.
    pub retention_days: Option<u32>,
    /// No frame for this long counts as a failure even if the connection stays open.
    #[serde(default = "default_stall_seconds")]
    pub stall_seconds: u32,
    #[serde(default)]
    pub motion: MotionConfig,
}

fn default_stall_seconds() -> u32 {
    10
}

fn yes() -> bool {
    true
}

/// `cameras[].motion`: detection switch, zones and masks in normalised coordinates (0..1).
#[derive(Clone, Debug, Deserialize)]
pub struct MotionConfig {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub zones: Vec<ZoneConfig>,
    /// Polygons where motion is ignored (trees, a road, a clock).
    #[serde(default)]
    pub masks: Vec<Vec<[f64; 2]>>,
    /// Frames analysed per second while something moves (key frames only while idle).
    #[serde(default = "default_analysis_fps")]
    pub analysis_fps: u32,
    /// Seconds of no motion before an event ends.
    #[serde(default = "default_motion_cooldown")]
    pub cooldown_seconds: u32,
    /// Whether motion raises an incident: never, always, or only at night.
    #[serde(default)]
    pub incidents: MotionIncidents,
}

impl Default for MotionConfig {
    fn default() -> Self {
        MotionConfig {
            enabled: false,
            zones: Vec::new(),
            masks: Vec::new(),
            analysis_fps: default_analysis_fps(),
            cooldown_seconds: default_motion_cooldown(),
            incidents: MotionIncidents::Off,
        }
    }
}

fn default_analysis_fps() -> u32 {
    5
}
fn default_motion_cooldown() -> u32 {
    10
}

/// When a camera's motion becomes an alarm incident (it is always recorded as an event).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MotionIncidents {
    #[default]
    Off,
    Always,
    /// Between `alarms.night_start_hour` and `alarms.night_end_hour`, local time.
    Night,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ZoneConfig {
    pub name: String,
    pub polygon: Vec<[f64; 2]>,
    /// 0 (least) to 1 (most sensitive).
    #[serde(default = "default_sensitivity")]
    pub sensitivity: f64,
}
fn default_sensitivity() -> f64 {
    0.5
}

/// `[[devices]]`: one panic button.
#[derive(Clone, Debug, Deserialize)]
pub struct DeviceConfig {
    pub id: String,
    pub name: Option<String>,
    pub location: Option<Location>,
    /// Cameras whose footage an alarm from this device pins.
    #[serde(default)]
    pub cameras: Vec<String>,
    /// Credentials the device uses on the embedded broker.
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub password_file: Option<PathBuf>,
}

#[derive(Copy, Clone, Debug, Deserialize, PartialEq)]
pub struct Location {
    pub lat: f64,
    pub lon: f64,
}

/// `[bridge]`: forwarding to the city platform.
#[derive(Clone, Debug, Deserialize, Default)]
pub struct BridgeConfig {
    pub mqtt: Option<BridgeMqttConfig>,
    pub gb28181: Option<Gb28181Config>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct BridgeMqttConfig {
    /// `mqtt://host[:1883]` or, with TLS, `mqtts://host[:8883]`; no credentials in it.
    pub url: String,
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub password_file: Option<PathBuf>,
    /// `mqtts://` only: the PEM CA certificate(s) the city broker's certificate must chain
    /// to. Without it, the system's roots (Debian `ca-certificates`).
    pub ca_file: Option<PathBuf>,
    /// `mqtts://` only, with `client_key_file`: this node's PEM certificate chain, for a
    /// broker that asks for client certificates.
    pub client_cert_file: Option<PathBuf>,
    /// `mqtts://` only: the PEM private key of `client_cert_file`.
    pub client_key_file: Option<PathBuf>,
}

impl BridgeMqttConfig {
    /// Whether `url` asks for TLS (`mqtts://` or `ssl://`).
    pub fn is_tls(&self) -> bool {
        let scheme = self.url.split_once("://").map_or("", |(s, _)| s);
        scheme.eq_ignore_ascii_case("mqtts") || scheme.eq_ignore_ascii_case("ssl")
    }
}
fn default_topic_prefix() -> String {
    "skynet/v1".into()
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SipTransport {
    #[default]
    Udp,
    Tcp,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Deserialize, Default)]
pub enum Charset {
    #[default]
    #[serde(
        rename = "gb18030",
        alias = "GB18030",
        alias = "GB2312",
        alias = "gb2312"
    )]
    Gb18030,
    #[serde(rename = "utf-8", alias = "UTF-8", alias = "utf8")]
    Utf8,
}

/// `[bridge.gb28181]`: this node as a GB/T 28181 lower platform.
#[derive(Clone, Debug, Deserialize)]
pub struct Gb28181Config {
    /// This node's 20-digit SIP id (platform type 200).
    pub local_id: String,
    /// Local SIP listen address.
    #[serde(default = "default_sip_listen")]
    pub local_listen: String,
    /// The upper platform's 20-digit SIP id.
    pub server_id: String,
    /// The upper platform's 10-digit domain (realm).
    pub server_domain: String,
    /// `host:port` of the upper platform.
    pub server_addr: String,
    #[serde(default)]
    pub transport: SipTransport,
    pub password: Option<Secret>,
    pub password_file: Option<PathBuf>,
    #[serde(default = "default_register_expires")]
    pub register_expires_seconds: u32,
    #[serde(default = "default_gb_keepalive")]
    pub keepalive_seconds: u32,
    #[serde(default)]
    pub charset: Charset,
    /// Send the GB/T 28181-2022 `X-GB-Ver: 3.0` header.
    #[serde(default)]
    pub gb2022: bool,
}
fn default_sip_listen() -> String {
    "0.0.0.0:5060".into()
}
fn default_register_expires() -> u32 {
    3600
}
fn default_gb_keepalive() -> u32 {
    60
}

impl Config {
    /// Where the database lives, after defaults.
    pub fn database_target(&self) -> DatabaseTarget {
        match self.database.url.as_deref() {
            None => DatabaseTarget::Sqlite {
                path: self.node.data_dir.join("xueliang.db"),
            },
            Some(u) if u.starts_with("sqlite:") => {
                let p = u
                    .trim_start_matches("sqlite:")
                    .trim_start_matches("//")
                    .split('?')
                    .next()
                    .unwrap_or_default();
                let p = PathBuf::from(p);
                DatabaseTarget::Sqlite {
                    path: if p.is_absolute() {
                        p
                    } else {
                        self.node.data_dir.join(p)
                    },
                }
            }
            Some(u) => DatabaseTarget::Postgres { url: u.to_owned() },
        }
    }

    pub fn recordings_dir(&self) -> PathBuf {
        self.storage
            .dir
            .clone()
            .unwrap_or_else(|| self.node.data_dir.join("recordings"))
    }

    pub fn node_id(&self) -> crate::NodeId {
        // Validation has checked the alphabet; a config that skipped validation is a bug.
        crate::NodeId::try_from(self.node.id.clone()).expect("node.id validated at load")
    }
}

#[cfg(test)]
mod tests;

impl Config {
    /// Things that are allowed but that an installer should hear about.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        for (i, t) in self.api.tokens.iter().enumerate() {
            let placeholder = t
                .token
                .as_ref()
                .is_some_and(|s| s.expose().to_ascii_lowercase().contains("change-me"));
            if placeholder {
                w.push(format!(
                    "api.tokens[{i}].token: still the example value; replace it (e.g. `openssl rand -hex 24`)"
                ));
            }
        }
        if self.api.tokens.is_empty() {
            w.push("api.tokens: none configured; every /api/v1 request will be refused".into());
        }
        if let Some(addr) = self.api.listen_addr()
            && !addr.ip().is_loopback()
        {
            w.push(format!(
                "api.listen: {addr} is reachable from the network over plain HTTP"
            ));
        }
        if self.mqtt.mode == MqttMode::Embedded && self.devices.iter().any(|d| d.password.is_none())
        {
            w.push("devices: some devices have no password; the embedded broker will accept them without one".into());
        }
        w
    }
}
