-- Platform settings, human accounts, player users and refresh tokens.
-- Ids are UUIDv7 text; times are Unix milliseconds; a nullable time stands for a flag.

CREATE TABLE settings (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE accounts (
    id            TEXT PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('admin', 'support', 'developer')),
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    disabled_at   BIGINT
);

CREATE TABLE users (
    id             TEXT PRIMARY KEY,
    -- sha256 of the 32-byte secret; NULL for users that only sign in with a device id
    secret_hash    TEXT,
    -- sha256 of the device id, for users created by a device sign-in
    device_id_hash TEXT UNIQUE,
    created_at     BIGINT NOT NULL,
    disabled_at    BIGINT
);

CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    -- every token rotated from one sign-in shares a family; reuse revokes the family
    family_id  TEXT NOT NULL,
    subject_id TEXT NOT NULL,
    role       TEXT NOT NULL,
    issued_at  BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT,
    revoked_at BIGINT
);

CREATE INDEX refresh_tokens_by_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_by_subject ON refresh_tokens (subject_id);
CREATE INDEX refresh_tokens_by_expiry ON refresh_tokens (expires_at);
