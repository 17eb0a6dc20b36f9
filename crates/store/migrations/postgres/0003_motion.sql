-- Motion events of a camera's detector, one row per event and zone, updated until it ends.
CREATE TABLE motion_events (
    id        TEXT PRIMARY KEY,
    node_id   TEXT NOT NULL,
    camera_id TEXT NOT NULL,
    zone      TEXT NOT NULL,
    start_ms  BIGINT NOT NULL,
    end_ms    BIGINT,
    score     DOUBLE PRECISION NOT NULL,
    boxes     TEXT NOT NULL
);
CREATE INDEX motion_events_camera ON motion_events (camera_id, start_ms);
