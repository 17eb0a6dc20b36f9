-- Xueliang schema v1 (SQLite). Times are UTC milliseconds since the Unix epoch (INTEGER).
-- Ids that leave the node are UUIDv7 text; node_id names the writer.

CREATE TABLE cameras (
    id              TEXT PRIMARY KEY,
    node_id         TEXT NOT NULL,
    name            TEXT,
    state           TEXT NOT NULL DEFAULT 'connecting'
                    CHECK (state IN ('connecting', 'online', 'offline')),
    last_error      TEXT,
    state_since_ms  INTEGER NOT NULL,
    updated_ms      INTEGER NOT NULL
);

-- Back-to-back segments of a camera merged into one row, kept up to date with every insert
-- and delete, so the timeline of a month is a handful of rows.
CREATE TABLE recording_runs (
    id         TEXT PRIMARY KEY,
    node_id    TEXT NOT NULL,
    camera_id  TEXT NOT NULL REFERENCES cameras (id),
    start_ms   INTEGER NOT NULL,
    end_ms     INTEGER NOT NULL,
    segments   INTEGER NOT NULL,
    bytes      INTEGER NOT NULL,
    frames     INTEGER NOT NULL
);
CREATE INDEX recording_runs_camera_start ON recording_runs (camera_id, start_ms);
CREATE INDEX recording_runs_camera_end ON recording_runs (camera_id, end_ms);

CREATE TABLE recording_segments (
    id              TEXT PRIMARY KEY,
    node_id         TEXT NOT NULL,
    camera_id       TEXT NOT NULL REFERENCES cameras (id),
    run_id          TEXT NOT NULL REFERENCES recording_runs (id),
    stream          TEXT NOT NULL CHECK (stream IN ('main', 'sub')),
    start_ms        INTEGER NOT NULL,
    end_ms          INTEGER NOT NULL,
    bytes           INTEGER NOT NULL CHECK (bytes >= 0),
    frames          INTEGER NOT NULL CHECK (frames >= 0),
    path            TEXT NOT NULL UNIQUE,
    sha256          TEXT,
    pinned_until_ms INTEGER,
    created_ms      INTEGER NOT NULL,
    CHECK (end_ms >= start_ms)
);
CREATE INDEX recording_segments_camera_time ON recording_segments (camera_id, start_ms);
CREATE INDEX recording_segments_run ON recording_segments (run_id, start_ms);

CREATE TABLE recording_gaps (
    id          TEXT PRIMARY KEY,
    node_id     TEXT NOT NULL,
    camera_id   TEXT NOT NULL REFERENCES cameras (id),
    start_ms    INTEGER NOT NULL,
    end_ms      INTEGER,
    reason      TEXT NOT NULL,
    created_ms  INTEGER NOT NULL
);
CREATE INDEX recording_gaps_camera_time ON recording_gaps (camera_id, start_ms);

CREATE TABLE devices (
    id           TEXT PRIMARY KEY,
    node_id      TEXT NOT NULL,
    name         TEXT,
    lat          REAL,
    lon          REAL,
    online       INTEGER,
    battery      INTEGER,
    rssi         INTEGER,
    last_seen_ms INTEGER,
    updated_ms   INTEGER NOT NULL
);

CREATE TABLE device_cameras (
    device_id TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    camera_id TEXT NOT NULL REFERENCES cameras (id) ON DELETE CASCADE,
    PRIMARY KEY (device_id, camera_id)
);

-- Raw signals: append-only; (source, source_id, seq) deduplicates device retransmissions.
CREATE TABLE alarm_signals (
    id           TEXT PRIMARY KEY,
    node_id      TEXT NOT NULL,
    source       TEXT NOT NULL CHECK (source IN ('device', 'motion', 'camera', 'system')),
    source_id    TEXT NOT NULL,
    seq          INTEGER,
    kind         TEXT NOT NULL,
    device_ts_ms INTEGER,
    received_ms  INTEGER NOT NULL,
    payload      TEXT NOT NULL,
    UNIQUE (source, source_id, seq)
);

CREATE TABLE incidents (
    id               TEXT PRIMARY KEY,
    node_id          TEXT NOT NULL,
    kind             TEXT NOT NULL,
    source_id        TEXT NOT NULL,
    priority         INTEGER NOT NULL,
    condition        TEXT NOT NULL CHECK (condition IN ('active', 'cleared')),
    state            TEXT NOT NULL CHECK (state IN ('raised', 'acknowledged', 'dispatched', 'resolved')),
    outcome          TEXT CHECK (outcome IN ('genuine', 'false', 'test', 'malicious', 'duplicate')),
    title            TEXT NOT NULL,
    lat              REAL,
    lon              REAL,
    opened_ms        INTEGER NOT NULL,
    updated_ms       INTEGER NOT NULL,
    resolved_ms      INTEGER,
    escalation_level INTEGER NOT NULL DEFAULT 0,
    signal_count     INTEGER NOT NULL DEFAULT 0,
    version          INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX incidents_state_opened ON incidents (state, opened_ms);
CREATE INDEX incidents_source ON incidents (kind, source_id, state);

CREATE TABLE incident_signals (
    incident_id TEXT NOT NULL REFERENCES incidents (id),
    signal_id   TEXT NOT NULL REFERENCES alarm_signals (id),
    PRIMARY KEY (incident_id, signal_id)
);

-- Every workflow change of an incident: append-only.
CREATE TABLE incident_changes (
    id          TEXT PRIMARY KEY,
    node_id     TEXT NOT NULL,
    incident_id TEXT NOT NULL REFERENCES incidents (id),
    at_ms       INTEGER NOT NULL,
    actor       TEXT NOT NULL,
    from_state  TEXT,
    to_state    TEXT NOT NULL,
    outcome     TEXT,
    note        TEXT
);
CREATE INDEX incident_changes_incident ON incident_changes (incident_id, at_ms);

-- One row per message per sink; written in the same transaction as the change it reports.
CREATE TABLE outbox (
    id              TEXT PRIMARY KEY,
    node_id         TEXT NOT NULL,
    sink            TEXT NOT NULL,
    channel         TEXT NOT NULL,
    priority        INTEGER NOT NULL,
    created_ms      INTEGER NOT NULL,
    payload         BLOB NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL,
    last_error      TEXT,
    delivered_ms    INTEGER,
    expired_ms      INTEGER
);
CREATE INDEX outbox_pending ON outbox (sink, delivered_ms, expired_ms, priority, id);

CREATE TABLE audit_log (
    id          TEXT PRIMARY KEY,
    node_id     TEXT NOT NULL,
    at_ms       INTEGER NOT NULL,
    actor       TEXT NOT NULL,
    actor_kind  TEXT NOT NULL CHECK (actor_kind IN ('user', 'token', 'system')),
    action      TEXT NOT NULL,
    target      TEXT,
    detail      TEXT NOT NULL DEFAULT '{}',
    remote_addr TEXT
);
CREATE INDEX audit_log_at ON audit_log (at_ms);

CREATE TABLE api_tokens (
    name         TEXT PRIMARY KEY,
    token_sha256 TEXT NOT NULL UNIQUE,
    role         TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'duty', 'viewer')),
    cameras      TEXT NOT NULL,
    devices      TEXT NOT NULL,
    source       TEXT NOT NULL DEFAULT 'config',
    updated_ms   INTEGER NOT NULL,
    last_used_ms INTEGER
);

CREATE TRIGGER alarm_signals_append_only_u BEFORE UPDATE ON alarm_signals
BEGIN SELECT RAISE(ABORT, 'alarm_signals is append-only'); END;
CREATE TRIGGER alarm_signals_append_only_d BEFORE DELETE ON alarm_signals
BEGIN SELECT RAISE(ABORT, 'alarm_signals is append-only'); END;
CREATE TRIGGER incident_changes_append_only_u BEFORE UPDATE ON incident_changes
BEGIN SELECT RAISE(ABORT, 'incident_changes is append-only'); END;
CREATE TRIGGER incident_changes_append_only_d BEFORE DELETE ON incident_changes
BEGIN SELECT RAISE(ABORT, 'incident_changes is append-only'); END;
CREATE TRIGGER audit_log_append_only_u BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER audit_log_append_only_d BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
