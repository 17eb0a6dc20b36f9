//! Rows as the rest of the service sees them.

use serde::Serialize;
use xueliang_core::config::Role;
use xueliang_core::model::{CameraState, Condition, IncidentState, Outcome, SignalSource};
use xueliang_core::{EntityId, Timestamp};

/// A configured camera to make known to the store.
#[derive(Clone, Debug)]
pub struct CameraUpsert {
    pub id: String,
    pub name: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CameraRecord {
    pub id: String,
    pub node_id: String,
    pub name: Option<String>,
    pub state: CameraState,
    pub last_error: Option<String>,
    pub state_since: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Clone, Debug)]
pub struct CameraStateChange {
    pub camera_id: String,
    pub state: CameraState,
    pub last_error: Option<String>,
    pub at: Timestamp,
}

/// One closed recording file.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Segment {
    pub id: EntityId,
    pub node_id: String,
    pub camera_id: String,
    /// `main` or `sub`.
    pub stream: String,
    pub start: Timestamp,
    pub end: Timestamp,
    pub bytes: i64,
    pub frames: i64,
    /// Relative to the storage directory.
    pub path: String,
    pub sha256: Option<String>,
    /// Exempt from retention until then (alarm footage).
    pub pinned_until: Option<Timestamp>,
    pub created_at: Timestamp,
}

/// Back-to-back segments of one camera, merged.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RecordingRun {
    pub start: Timestamp,
    pub end: Timestamp,
    pub segments: i64,
    pub bytes: i64,
    pub frames: i64,
}

/// A span without recording, and why.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Gap {
    pub id: EntityId,
    pub node_id: String,
    pub camera_id: String,
    pub start: Timestamp,
    /// `None` while the gap is still open.
    pub end: Option<Timestamp>,
    pub reason: String,
    pub created_at: Timestamp,
}

/// Recordings of one camera as the index counts them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StorageUsage {
    pub camera_id: String,
    pub bytes: i64,
    pub segments: i64,
    pub oldest: Option<Timestamp>,
}

#[derive(Clone, Debug)]
pub struct DeviceUpsert {
    pub id: String,
    pub name: Option<String>,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
    pub cameras: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DeviceRecord {
    pub id: String,
    pub node_id: String,
    pub name: Option<String>,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
    pub cameras: Vec<String>,
    pub online: Option<bool>,
    pub battery: Option<i64>,
    pub rssi: Option<i64>,
    pub last_seen: Option<Timestamp>,
}

/// A heartbeat, will or alarm told us something about a device.
#[derive(Clone, Debug)]
pub struct DeviceStatus {
    pub device_id: String,
    pub at: Timestamp,
    /// `None` leaves the stored value alone.
    pub online: Option<bool>,
    pub battery: Option<i64>,
    pub rssi: Option<i64>,
}

/// A raw alarm signal exactly as received.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Signal {
    pub id: EntityId,
    pub node_id: String,
    pub source: SignalSource,
    /// Device id for presses, camera id for motion and faults.
    pub source_id: String,
    /// The device's own counter; with `source_id` the dedup key.
    pub seq: Option<i64>,
    pub kind: String,
    pub device_ts: Option<Timestamp>,
    pub received_at: Timestamp,
    /// The payload as JSON text.
    pub payload: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignalInsert {
    Inserted,
    /// Already stored under this id; nothing was written.
    Duplicate(EntityId),
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Incident {
    pub id: EntityId,
    pub node_id: String,
    /// `panic`, `tamper`, `test`, `motion`, `device_offline`, `camera_offline`, `low_battery`, ...
    pub kind: String,
    pub source_id: String,
    /// 1 is the most urgent.
    pub priority: i64,
    pub condition: Condition,
    pub state: IncidentState,
    pub outcome: Option<Outcome>,
    pub title: String,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
    pub opened_at: Timestamp,
    pub updated_at: Timestamp,
    pub resolved_at: Option<Timestamp>,
    pub escalation_level: i64,
    pub signal_count: i64,
    /// Bumped on every update; writers pass the version they read.
    pub version: i64,
}

/// One workflow step of an incident.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct IncidentChange {
    pub id: EntityId,
    pub node_id: String,
    pub incident_id: EntityId,
    pub at: Timestamp,
    /// `user:NAME`, `token:NAME` or `system`.
    pub actor: String,
    pub from_state: Option<IncidentState>,
    pub to_state: IncidentState,
    pub outcome: Option<Outcome>,
    pub note: Option<String>,
}

/// A new incident with everything that must be written with it.
#[derive(Clone, Debug)]
pub struct NewIncident {
    pub incident: Incident,
    pub change: IncidentChange,
    pub signals: Vec<EntityId>,
    pub outbox: Vec<OutboxEntry>,
}

/// A change to an existing incident.
#[derive(Clone, Debug)]
pub struct IncidentUpdate {
    pub id: EntityId,
    pub expected_version: i64,
    pub at: Timestamp,
    pub state: IncidentState,
    pub condition: Condition,
    pub outcome: Option<Outcome>,
    pub priority: i64,
    pub escalation_level: i64,
    /// Signals that joined the incident with this update.
    pub add_signals: Vec<EntityId>,
    /// Recorded when the workflow state changes or a person acted.
    pub change: Option<IncidentChange>,
    pub outbox: Vec<OutboxEntry>,
}

#[derive(Clone, Debug, Default)]
pub struct IncidentFilter {
    pub state: Option<IncidentState>,
    /// Only incidents not yet resolved.
    pub open_only: bool,
    pub since: Option<Timestamp>,
    pub priority: Option<i64>,
    /// Raised by this device (or camera).
    pub device: Option<String>,
    /// Raised by this camera, or with footage of it attached.
    pub camera: Option<String>,
    pub limit: u32,
}

/// A message for one sink, delivered at least once with the same bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct OutboxEntry {
    pub id: EntityId,
    pub node_id: String,
    pub sink: String,
    /// Order is kept within a channel (e.g. one incident).
    pub channel: String,
    pub priority: i64,
    pub created_at: Timestamp,
    pub payload: Vec<u8>,
    pub attempts: i64,
    pub next_attempt: Timestamp,
    pub last_error: Option<String>,
    pub delivered_at: Option<Timestamp>,
    pub expired_at: Option<Timestamp>,
}

/// What became of one delivery attempt; a drain round writes its results in one transaction
/// with [`crate::Store::record_outbox_results`].
#[derive(Clone, Debug, PartialEq)]
pub enum OutboxResult {
    /// The sink acknowledged it: never sent again.
    Delivered { id: EntityId, at: Timestamp },
    /// A retryable failure: the entry (and so its channel) waits until `next_attempt`.
    Failed {
        id: EntityId,
        next_attempt: Timestamp,
        error: String,
    },
    /// The sink refused it for good: it is expired with `error` as the reason, which unblocks
    /// the rest of its channel.
    Rejected {
        id: EntityId,
        at: Timestamp,
        error: String,
    },
}

/// The undelivered, unexpired part of one sink's outbox.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutboxStats {
    pub pending: i64,
    /// Payload bytes.
    pub bytes: i64,
    /// Creation time of the oldest entry.
    pub oldest: Option<Timestamp>,
    /// When the earliest channel head becomes due (may be in the past).
    pub next_due: Option<Timestamp>,
}

/// An entry given up on by [`crate::Store::expire_outbox`] or
/// [`crate::Store::expire_outbox_over_budget`], for the caller to count and log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpiredOutbox {
    pub id: EntityId,
    pub channel: String,
    pub priority: i64,
    pub created_at: Timestamp,
    pub attempts: i64,
    pub bytes: i64,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ActorKind {
    User,
    Token,
    System,
}

impl ActorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::User => "user",
            ActorKind::Token => "token",
            ActorKind::System => "system",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AuditEntry {
    pub id: EntityId,
    pub node_id: String,
    pub at: Timestamp,
    pub actor: String,
    pub actor_kind: ActorKind,
    /// e.g. `login`, `export`, `alarm.ack`, `config.load`.
    pub action: String,
    pub target: Option<String>,
    /// JSON object text.
    pub detail: String,
    pub remote_addr: Option<String>,
}

/// A machine token: only its SHA-256 is stored.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiToken {
    pub name: String,
    pub token_sha256: String,
    pub role: Role,
    pub cameras: Vec<String>,
    pub devices: Vec<String>,
    pub last_used: Option<Timestamp>,
}

/// Hex SHA-256 of a token, the form stored and compared.
pub fn hash_token(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// A committed change as the API's event stream and the MQTT events topic carry it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EventRecord {
    /// Sorts in commit order for one node (see `EntityId::new_ordered`): the stream's cursor.
    pub id: EntityId,
    pub node_id: String,
    pub at: Timestamp,
    /// `alarm` or `camera`.
    pub topic: String,
    /// The incident's or camera's id.
    pub subject: String,
    /// JSON text.
    pub payload: String,
}

/// Footage attached to an incident: one span per camera, which only grows.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct IncidentClip {
    pub incident_id: EntityId,
    pub camera_id: String,
    pub from: Timestamp,
    pub to: Timestamp,
}

/// A motion event of one camera zone; `end` stays empty while it lasts.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MotionRecord {
    pub id: EntityId,
    pub node_id: String,
    pub camera_id: String,
    pub zone: String,
    pub start: Timestamp,
    pub end: Option<Timestamp>,
    pub score: f64,
    /// JSON array of `[x, y, w, h]` boxes in normalised coordinates.
    pub boxes: String,
}

/// One group commit of the alarm pipeline: everything its engine decided for a batch of device
/// messages or operator actions, written in one transaction.
#[derive(Clone, Debug, Default)]
pub struct AlarmCommit {
    pub creates: Vec<NewIncident>,
    /// Applied after the creates, in order; updates of one incident chain their versions.
    pub updates: Vec<IncidentUpdate>,
    /// Upserted: an existing clip is widened, never narrowed.
    pub clips: Vec<IncidentClip>,
    /// Inserted, or updated (end, score, boxes) when already stored.
    pub motion: Vec<MotionRecord>,
    pub events: Vec<EventRecord>,
}

impl AlarmCommit {
    pub fn is_empty(&self) -> bool {
        self.creates.is_empty()
            && self.updates.is_empty()
            && self.clips.is_empty()
            && self.motion.is_empty()
            && self.events.is_empty()
    }
}

/// An operator console user. `password_hash` is an argon2id PHC string, never the password.
#[derive(Clone, PartialEq, Serialize)]
pub struct UserRecord {
    /// UUIDv7.
    pub id: EntityId,
    pub username: String,
    #[serde(skip)]
    pub password_hash: String,
    pub role: Role,
    /// Camera ids the user may see; `"*"` for all.
    pub cameras: Vec<String>,
    /// Device ids the user may see; `"*"` for all.
    pub devices: Vec<String>,
    pub disabled: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl std::fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRecord")
            .field("id", &self.id)
            .field("username", &self.username)
            .field("password_hash", &"<redacted>")
            .field("role", &self.role)
            .field("cameras", &self.cameras)
            .field("devices", &self.devices)
            .field("disabled", &self.disabled)
            .finish()
    }
}

/// What [`crate::Store::update_user`] changes; `None` keeps the stored value.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UserUpdate {
    pub role: Option<Role>,
    pub cameras: Option<Vec<String>>,
    pub devices: Option<Vec<String>>,
}

/// A browser session. `id` is the hex SHA-256 of the cookie value, so the table alone opens
/// nothing; `csrf` is echoed by the page in `X-CSRF-Token`.
#[derive(Clone, PartialEq)]
pub struct SessionRecord {
    pub id: String,
    pub user_id: EntityId,
    pub csrf: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub last_seen: Timestamp,
    pub remote_addr: Option<String>,
}

impl std::fmt::Debug for SessionRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionRecord")
            .field("user_id", &self.user_id)
            .field("created_at", &self.created_at)
            .field("expires_at", &self.expires_at)
            .field("last_seen", &self.last_seen)
            .field("remote_addr", &self.remote_addr)
            .finish_non_exhaustive()
    }
}
