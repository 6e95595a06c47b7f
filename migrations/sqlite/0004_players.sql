-- Players (a user within one stage, with the profile its game logic keeps) and clients (one
-- session of a player in a deployment). A client row outlives a platform restart so that the
-- client can reconnect; deleted clients keep their reason for a day.

CREATE TABLE players (
    id         TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    stage_id   TEXT NOT NULL REFERENCES stages (id) ON DELETE CASCADE,
    -- JSON object owned by the game logic (set_profile)
    profile    TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (user_id, stage_id)
);

CREATE TABLE clients (
    id            TEXT PRIMARY KEY,
    player_id     TEXT NOT NULL REFERENCES players (id) ON DELETE CASCADE,
    user_id       TEXT NOT NULL,
    deployment_id TEXT NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
    -- the node holding the client's socket
    node_id       TEXT NOT NULL,
    -- the runtime the client is assigned to, and its team there
    runtime_id    TEXT,
    group_name    TEXT,
    status        TEXT NOT NULL CHECK (status IN ('active', 'deleted')),
    reason        TEXT,
    created_at    BIGINT NOT NULL,
    deleted_at    BIGINT
);

CREATE INDEX clients_by_node ON clients (node_id, status);
CREATE INDEX clients_deleted ON clients (status, deleted_at);
