-- Xueliang schema v1 (PostgreSQL). Times are UTC milliseconds since the Unix epoch (BIGINT),
-- the same unit as on SQLite so one set of queries serves both.
-- Ids that leave the node are UUIDv7 text; node_id names the writer.

CREATE TABLE cameras (
    id              TEXT PRIMARY KEY,
    node_id         TEXT NOT NULL,
    name            TEXT,
    state           TEXT NOT NULL DEFAULT 'connecting'
                    CHECK (state IN ('connecting', 'online', 'offline')),
    last_error      TEXT,
    state_since_ms  BIGINT NOT NULL,
    updated_ms      BIGINT NOT NULL
);

-- Back-to-back segments of a camera merged into one row, kept up to date with every insert
-- and delete, so the timeline of a month is a handful of rows.
CREATE TABLE recording_runs (
    id         TEXT PRIMARY KEY,
    node_id    TEXT NOT NULL,
    camera_id  TEXT NOT NULL REFERENCES cameras (id),
    start_ms   BIGINT NOT NULL,
    end_ms     BIGINT NOT NULL,
    segments   BIGINT NOT NULL,
    bytes      BIGINT NOT NULL,
    frames     BIGINT NOT NULL
);
CREATE INDEX recording_runs_camera_start ON recording_runs (camera_id, start_ms);
CREATE INDEX recording_runs_camera_end ON recording_runs (camera_id, end_ms);

CREATE TABLE recording_segments (
    id              TEXT PRIMARY KEY,
    node_id         TEXT NOT NULL,
    camera_id       TEXT NOT NULL REFERENCES cameras (id),
    run_id          TEXT NOT NULL REFERENCES recording_runs (id),
    stream          TEXT NOT NULL CHECK (stream IN ('main', 'sub')),
    start_ms        BIGINT NOT NULL,
    end_ms          BIGINT NOT NULL,
    bytes           BIGINT NOT NULL CHECK (bytes >= 0),
    frames          BIGINT NOT NULL CHECK (frames >= 0),
    path            TEXT NOT NULL UNIQUE,
    sha256          TEXT,
    pinned_until_ms BIGINT,
    created_ms      BIGINT NOT NULL,
    CHECK (end_ms >= start_ms)
);
CREATE INDEX recording_segments_camera_time ON recording_segments (camera_id, start_ms);
CREATE INDEX recording_segments_run ON recording_segments (run_id, start_ms);

CREATE TABLE recording_gaps (
    id          TEXT PRIMARY KEY,
    node_id     TEXT NOT NULL,
    camera_id   TEXT NOT NULL REFERENCES cameras (id),
    start_ms    BIGINT NOT NULL,
    end_ms      BIGINT,
    reason      TEXT NOT NULL,
    created_ms  BIGINT NOT NULL
);
CREATE INDEX recording_gaps_camera_time ON recording_gaps (camera_id, start_ms);

CREATE TABLE devices (
    id           TEXT PRIMARY KEY,
    node_id      TEXT NOT NULL,
    name         TEXT,
    lat          DOUBLE PRECISION,
    lon          DOUBLE PRECISION,
    online       BOOLEAN,
    battery      BIGINT,
    rssi         BIGINT,
    last_seen_ms BIGINT,
    updated_ms   BIGINT NOT NULL
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
    seq          BIGINT,
    kind         TEXT NOT NULL,
    device_ts_ms BIGINT,
    received_ms  BIGINT NOT NULL,
    payload      TEXT NOT NULL,
    UNIQUE (source, source_id, seq)
);

CREATE TABLE incidents (
    id               TEXT PRIMARY KEY,
    node_id          TEXT NOT NULL,
    kind             TEXT NOT NULL,
    source_id        TEXT NOT NULL,
    priority         BIGINT NOT NULL,
    condition        TEXT NOT NULL CHECK (condition IN ('active', 'cleared')),
    state            TEXT NOT NULL CHECK (state IN ('raised', 'acknowledged', 'dispatched', 'resolved')),
    outcome          TEXT CHECK (outcome IN ('genuine', 'false', 'test', 'malicious', 'duplicate')),
    title            TEXT NOT NULL,
    lat              DOUBLE PRECISION,
    lon              DOUBLE PRECISION,
    opened_ms        BIGINT NOT NULL,
    updated_ms       BIGINT NOT NULL,
    resolved_ms      BIGINT,
    escalation_level BIGINT NOT NULL DEFAULT 0,
    signal_count     BIGINT NOT NULL DEFAULT 0,
    version          BIGINT NOT NULL DEFAULT 1
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
    at_ms       BIGINT NOT NULL,
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
    priority        BIGINT NOT NULL,
    created_ms      BIGINT NOT NULL,
    payload         BYTEA NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_ms BIGINT NOT NULL,
    last_error      TEXT,
    delivered_ms    BIGINT,
    expired_ms      BIGINT
);
CREATE INDEX outbox_pending ON outbox (sink, delivered_ms, expired_ms, priority, id);

CREATE TABLE audit_log (
    id          TEXT PRIMARY KEY,
    node_id     TEXT NOT NULL,
    at_ms       BIGINT NOT NULL,
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
    updated_ms   BIGINT NOT NULL,
    last_used_ms BIGINT
);

CREATE FUNCTION xl_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END
$$;
CREATE TRIGGER alarm_signals_append_only BEFORE UPDATE OR DELETE ON alarm_signals
    FOR EACH ROW EXECUTE FUNCTION xl_append_only();
CREATE TRIGGER incident_changes_append_only BEFORE UPDATE OR DELETE ON incident_changes
    FOR EACH ROW EXECUTE FUNCTION xl_append_only();
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION xl_append_only();
