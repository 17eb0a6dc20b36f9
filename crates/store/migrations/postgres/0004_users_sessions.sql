-- Operator console users (argon2id PHC hashes) and their browser sessions.
CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'duty', 'viewer')),
    cameras       TEXT NOT NULL,
    devices       TEXT NOT NULL,
    disabled      BOOLEAN NOT NULL DEFAULT FALSE,
    created_ms    BIGINT NOT NULL,
    updated_ms    BIGINT NOT NULL
);

-- A session's id is the SHA-256 (hex) of the cookie value: a leaked table opens no session.
CREATE TABLE sessions (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    csrf         TEXT NOT NULL,
    created_ms   BIGINT NOT NULL,
    expires_ms   BIGINT NOT NULL,
    last_seen_ms BIGINT NOT NULL,
    remote_addr  TEXT
);
CREATE INDEX sessions_user ON sessions (user_id);
CREATE INDEX sessions_expires ON sessions (expires_ms);
