-- Committed changes in commit order per node, for the API's event stream (resumable with
-- Last-Event-ID) and the MQTT events topic. Pruned by age.
CREATE TABLE events (
    id       TEXT PRIMARY KEY,
    node_id  TEXT NOT NULL,
    at_ms    BIGINT NOT NULL,
    topic    TEXT NOT NULL,
    subject  TEXT NOT NULL,
    payload  TEXT NOT NULL
);
CREATE INDEX events_at ON events (at_ms);

-- Footage attached to an incident. Retention keeps the segments overlapping a clip while its
-- incident is open and for the configured hold after it is resolved, including segments
-- recorded after the clip was attached (post-roll).
CREATE TABLE incident_clips (
    incident_id TEXT NOT NULL REFERENCES incidents (id),
    camera_id   TEXT NOT NULL,
    from_ms     BIGINT NOT NULL,
    to_ms       BIGINT NOT NULL,
    PRIMARY KEY (incident_id, camera_id)
);
CREATE INDEX incident_clips_camera ON incident_clips (camera_id, from_ms);
