//! Xueliang's persistence: the [`Store`] trait, its SQLite and PostgreSQL backends and migrations.
//!
//! The store is the source of truth. Both backends run the same SQL text (positional `$N`
//! parameters, millisecond integer times) and pass one contract test suite
//! (`tests/contract.rs`). Several nodes may write one PostgreSQL database: rows that leave a
//! node carry UUIDv7 ids and the writer's node id, and incident updates use optimistic versions.

mod backend;
mod error;
mod migrate;
mod model;
pub mod testing;

use std::fmt::Debug;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use xueliang_core::config::{Config, DatabaseTarget};
use xueliang_core::{EntityId, Error, ErrorKind, NodeId, Timestamp};

pub use migrate::{MIGRATIONS_POSTGRES, MIGRATIONS_SQLITE, Migration};
pub use model::*;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Segments whose ends are closer than this belong to one run.
pub const RUN_JOIN_MS: i64 = 1_000;

/// Which engine a store runs on.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// Everything the service keeps. Methods that change several tables do so in one transaction.
#[async_trait]
pub trait Store: Send + Sync + Debug {
    fn backend(&self) -> Backend;

    /// The node this store writes as.
    fn node_id(&self) -> &NodeId;

    /// Cheap round trip, for health checks.
    async fn ping(&self) -> Result<()>;

    /// Applies pending migrations; returns the versions applied now.
    async fn migrate(&self) -> Result<Vec<i64>>;

    /// Highest applied migration, 0 on an empty database.
    async fn schema_version(&self) -> Result<i64>;

    /// Inserts configured cameras or renames them; keeps their state. Cameras no longer in the
    /// configuration stay, because recordings refer to them.
    async fn sync_cameras(&self, cameras: &[CameraUpsert], at: Timestamp) -> Result<()>;
    async fn set_camera_state(&self, change: &CameraStateChange) -> Result<()>;
    async fn list_cameras(&self) -> Result<Vec<CameraRecord>>;
    async fn get_camera(&self, id: &str) -> Result<Option<CameraRecord>>;

    async fn insert_segment(&self, segment: &Segment) -> Result<()>;
    /// Inserts many segments in one transaction (imports, tests, benchmarks).
    async fn insert_segments(&self, segments: &[Segment]) -> Result<()>;
    /// Runs of back-to-back recording (segments less than [`RUN_JOIN_MS`] apart) that overlap
    /// `[from, to)`, whole. Maintained on every insert and delete, so months cost a few rows.
    async fn recording_runs(
        &self,
        camera_id: &str,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<RecordingRun>>;
    /// Segments of a camera that overlap `[from, to)`, oldest first.
    async fn list_segments(
        &self,
        camera_id: &str,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<Segment>>;
    async fn insert_gap(&self, gap: &Gap) -> Result<()>;
    /// Gaps of a camera that overlap `[from, to)`; an open gap (no end) overlaps everything after it.
    async fn list_gaps(&self, camera_id: &str, from: Timestamp, to: Timestamp) -> Result<Vec<Gap>>;

    /// Ends an open gap.
    async fn close_gap(&self, id: EntityId, end: Timestamp) -> Result<()>;
    /// Removes a segment's row (its file is the caller's business).
    async fn delete_segment(&self, id: EntityId) -> Result<()>;
    /// Oldest segments first, across cameras or for one, optionally only those that started
    /// before `before`. Left out: segments pinned past `now`, and segments overlapping a clip of
    /// an incident that is open or was resolved less than `clip_hold_ms` before `now`.
    async fn oldest_unpinned_segments(
        &self,
        camera_id: Option<&str>,
        before: Option<Timestamp>,
        now: Timestamp,
        clip_hold_ms: i64,
        limit: u32,
    ) -> Result<Vec<Segment>>;
    /// Keeps a camera's segments overlapping `[from, to)` from retention until `until`
    /// (extending, never shortening, an existing pin). Returns how many were pinned.
    async fn pin_segments(
        &self,
        camera_id: &str,
        from: Timestamp,
        to: Timestamp,
        until: Timestamp,
    ) -> Result<u64>;
    /// Per camera: bytes indexed, segment count and oldest start.
    async fn storage_usage(&self) -> Result<Vec<StorageUsage>>;

    /// Inserts configured devices or updates their name, location and camera links.
    async fn sync_devices(&self, devices: &[DeviceUpsert], at: Timestamp) -> Result<()>;
    async fn record_device_status(&self, status: &DeviceStatus) -> Result<()>;
    async fn list_devices(&self) -> Result<Vec<DeviceRecord>>;

    /// Stores a raw signal once: a second signal with the same `(source, source_id, seq)` is not
    /// stored and the first one's id is returned.
    async fn insert_signal(&self, signal: &Signal) -> Result<SignalInsert>;
    async fn get_signal(&self, id: EntityId) -> Result<Option<Signal>>;
    /// The incident a signal joined, if any (a crash between storing a signal and linking it
    /// leaves it unlinked; its redelivery must then be handled, not ignored).
    async fn incident_of_signal(&self, signal: EntityId) -> Result<Option<EntityId>>;

    /// Creates an incident with its first change, linked signals and outbox entries, atomically.
    async fn create_incident(&self, new: &NewIncident) -> Result<()>;
    /// Applies `update` if the incident is still at `update.expected_version`, recording the
    /// change and enqueuing the outbox entries in the same transaction. A concurrent writer
    /// yields `FailedPrecondition`.
    async fn update_incident(&self, update: &IncidentUpdate) -> Result<Incident>;
    async fn get_incident(&self, id: EntityId) -> Result<Option<Incident>>;
    async fn list_incidents(&self, filter: &IncidentFilter) -> Result<Vec<Incident>>;
    async fn incident_changes(&self, id: EntityId) -> Result<Vec<IncidentChange>>;
    async fn incident_signals(&self, id: EntityId) -> Result<Vec<Signal>>;

    /// Stores a batch of device reports and signals in one transaction: statuses of unknown
    /// devices are skipped, and each signal is inserted once as by [`Store::insert_signal`].
    async fn ingest_device_batch(
        &self,
        statuses: &[DeviceStatus],
        signals: &[Signal],
    ) -> Result<Vec<SignalInsert>>;
    /// Writes a group commit atomically. A version conflict in any update rolls all of it back
    /// with `FailedPrecondition`.
    async fn commit_alarms(&self, commit: &AlarmCommit) -> Result<()>;
    async fn incident_clips(&self, id: EntityId) -> Result<Vec<IncidentClip>>;
    /// Motion events of a camera overlapping `[from, to)` (an open one overlaps everything
    /// after its start), oldest first.
    async fn list_motion(
        &self,
        camera_id: &str,
        from: Timestamp,
        to: Timestamp,
        limit: u32,
    ) -> Result<Vec<MotionRecord>>;

    /// Appends events outside an alarm commit (camera state changes).
    async fn append_events(&self, events: &[EventRecord]) -> Result<()>;
    /// Events after `after` by id, oldest first.
    async fn events_after(&self, after: EntityId, limit: u32) -> Result<Vec<EventRecord>>;
    async fn latest_event_id(&self) -> Result<Option<EntityId>>;
    /// Removes events older than `before`; returns how many.
    async fn prune_events(&self, before: Timestamp) -> Result<u64>;

    async fn enqueue_outbox(&self, entries: &[OutboxEntry]) -> Result<()>;
    /// Undelivered, unexpired entries of `sink` due at `now`: by priority, then by id (age).
    async fn pending_outbox(
        &self,
        sink: &str,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<OutboxEntry>>;
    async fn mark_outbox_delivered(&self, id: EntityId, at: Timestamp) -> Result<()>;
    async fn mark_outbox_failed(
        &self,
        id: EntityId,
        next_attempt: Timestamp,
        error: &str,
    ) -> Result<()>;

    /// The outbox reads and expiries below see only this node's entries (`node_id`): nodes
    /// sharing one PostgreSQL each drain their own, under their own registration and topic.
    ///
    /// What a sink's drainer may send now without breaking any channel's order. A channel's
    /// head is its oldest undelivered, unexpired entry (by id); a channel whose head is not yet
    /// due (a failed attempt waiting for its retry) is left out whole, so it blocks only itself.
    /// From every due channel come up to `per_channel` consecutive entries from the head on;
    /// channels are ordered by their head's priority, then its id, so an urgent channel
    /// overtakes a backlog of others. At most `limit` entries, each channel's in id order.
    async fn due_outbox(
        &self,
        sink: &str,
        now: Timestamp,
        per_channel: u32,
        limit: u32,
    ) -> Result<Vec<OutboxEntry>>;
    /// Makes this node's undelivered, unexpired entries of `sink` that wait for a retry later
    /// than `now` due at `now`, keeping their attempts and last error: once the sink accepts
    /// deliveries again, channels held back by a failure during the outage need not wait out
    /// their back-off. Returns how many entries were rescheduled.
    async fn retry_outbox_now(&self, sink: &str, now: Timestamp) -> Result<u64>;
    /// Writes the results of a drain round in one transaction (one commit instead of one per
    /// entry). Results for entries already delivered or expired are skipped (a restarted
    /// drainer may resend what its predecessor delivered but did not record). Returns how many
    /// rows changed.
    async fn record_outbox_results(&self, results: &[OutboxResult]) -> Result<u64>;
    /// Expires the undelivered entries of `sink` created before `before`, recording `reason`
    /// as their last error. Returns what was expired.
    async fn expire_outbox(
        &self,
        sink: &str,
        before: Timestamp,
        at: Timestamp,
        reason: &str,
    ) -> Result<Vec<ExpiredOutbox>>;
    /// While the undelivered payload bytes of `sink` exceed `max_bytes`, expires entries
    /// lowest priority (highest number) first and oldest first within a priority. Entries with
    /// `priority <= keep_priority` are never expired by this budget.
    async fn expire_outbox_over_budget(
        &self,
        sink: &str,
        max_bytes: i64,
        keep_priority: i64,
        at: Timestamp,
        reason: &str,
    ) -> Result<Vec<ExpiredOutbox>>;
    async fn outbox_stats(&self, sink: &str) -> Result<OutboxStats>;
    /// Deletes entries (of every sink) delivered or expired before `before`; returns how many.
    async fn prune_outbox(&self, before: Timestamp) -> Result<u64>;

    async fn append_audit(&self, entry: &AuditEntry) -> Result<()>;
    /// Audit entries at or after `since`, oldest first.
    async fn list_audit(&self, since: Timestamp, limit: u32) -> Result<Vec<AuditEntry>>;

    /// Makes the configuration-sourced tokens exactly `tokens` (hashes only).
    async fn sync_api_tokens(&self, tokens: &[ApiToken], at: Timestamp) -> Result<()>;
    async fn list_api_tokens(&self) -> Result<Vec<ApiToken>>;
    async fn touch_api_token(&self, name: &str, at: Timestamp) -> Result<()>;

    /// Adds a user; a taken username yields `AlreadyExists`.
    async fn create_user(&self, user: &UserRecord) -> Result<()>;
    /// Changes a user's role or scopes; `NotFound` for an unknown username.
    async fn update_user(
        &self,
        username: &str,
        update: &UserUpdate,
        at: Timestamp,
    ) -> Result<UserRecord>;
    /// Replaces a user's password hash and ends all of the user's sessions.
    async fn update_user_password(
        &self,
        username: &str,
        password_hash: &str,
        at: Timestamp,
    ) -> Result<()>;
    /// Disables (or re-enables) a user; disabling ends all of the user's sessions.
    async fn set_user_disabled(&self, username: &str, disabled: bool, at: Timestamp) -> Result<()>;
    async fn get_user_by_name(&self, username: &str) -> Result<Option<UserRecord>>;
    async fn get_user(&self, id: EntityId) -> Result<Option<UserRecord>>;
    /// Every user, by username.
    async fn list_users(&self) -> Result<Vec<UserRecord>>;

    async fn create_session(&self, session: &SessionRecord) -> Result<()>;
    /// The session with this id (hex SHA-256 of the cookie), expired or not.
    async fn get_session(&self, id: &str) -> Result<Option<SessionRecord>>;
    /// Records use at `at` and moves the idle expiry to `expires`.
    async fn touch_session(&self, id: &str, at: Timestamp, expires: Timestamp) -> Result<()>;
    async fn delete_session(&self, id: &str) -> Result<()>;
    /// Removes sessions that expired before `before`; returns how many.
    async fn prune_sessions(&self, before: Timestamp) -> Result<u64>;

    /// Closes the pool, waiting for connections in use.
    async fn close(&self);
}

/// Connection settings independent of the configuration file, for tools and tests.
#[derive(Clone, Debug)]
pub struct OpenOptions {
    pub target: DatabaseTarget,
    pub password: Option<String>,
    pub max_connections: u32,
    pub busy_timeout: Duration,
}

impl OpenOptions {
    pub fn from_config(cfg: &Config) -> Self {
        OpenOptions {
            target: cfg.database_target(),
            password: cfg
                .database
                .password
                .as_ref()
                .map(|s| s.expose().to_owned()),
            max_connections: cfg.database.max_connections,
            busy_timeout: Duration::from_millis(cfg.database.busy_timeout_ms.into()),
        }
    }

    pub fn sqlite(path: &Path) -> Self {
        OpenOptions {
            target: DatabaseTarget::Sqlite {
                path: path.to_owned(),
            },
            password: None,
            max_connections: 4,
            busy_timeout: Duration::from_secs(5),
        }
    }

    pub fn postgres(url: &str) -> Self {
        OpenOptions {
            target: DatabaseTarget::Postgres {
                url: url.to_owned(),
            },
            password: None,
            max_connections: 4,
            busy_timeout: Duration::from_secs(5),
        }
    }
}

/// Opens (and for SQLite creates) the database. Does not migrate: call [`Store::migrate`].
pub async fn open(opts: &OpenOptions, node: NodeId) -> Result<Arc<dyn Store>> {
    match &opts.target {
        DatabaseTarget::Sqlite { path } => Ok(Arc::new(
            backend::sqlite::SqliteStore::open(path, opts, node).await?,
        )),
        DatabaseTarget::Postgres { url } => Ok(Arc::new(
            backend::postgres::PgStore::open(url, opts, node).await?,
        )),
    }
}

/// A URL safe to print: no password, no query string.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_password(None);
            u.set_query(None);
            u.to_string()
        }
        Err(_) => "(unparseable database url)".into(),
    }
}

pub(crate) fn invalid(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidArgument, msg)
}
