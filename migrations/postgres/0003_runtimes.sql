-- Runtimes (one running instance of a deployment's lobby or match logic), the leases that keep
-- two platform nodes from acting on the same rows, and each node's identity.

CREATE TABLE runtimes (
    id             TEXT PRIMARY KEY,
    deployment_id  TEXT NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
    qualifier      TEXT NOT NULL CHECK (qualifier IN ('lobby', 'match')),
    mode           TEXT,
    status         TEXT NOT NULL CHECK (status IN ('starting', 'running', 'stopping', 'stopped', 'failed')),
    -- sha256 of the runtime's secret; the secret is exchanged for tokens once
    secret_hash    TEXT NOT NULL,
    secret_used_at BIGINT,
    -- the platform node that placed it, and where: a local process or a container
    node_id        TEXT NOT NULL,
    pool_kind      TEXT NOT NULL CHECK (pool_kind IN ('process', 'docker')),
    pid            BIGINT,
    created_at     BIGINT NOT NULL,
    connected_at   BIGINT,
    stopped_at     BIGINT,
    exit_code      BIGINT,
    failure        TEXT
);

CREATE INDEX runtimes_by_deployment ON runtimes (deployment_id, status);
CREATE INDEX runtimes_by_node ON runtimes (node_id, status);

CREATE TABLE leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
