-- Platform nodes (docs/nodes.md): each `rally server` has a row, written at start and kept
-- fresh by its heartbeat. A node whose heartbeat is older than `node_dead_after_secs` is dead;
-- one stopped gracefully says when.
CREATE TABLE nodes (
    id           TEXT PRIMARY KEY,
    url          TEXT NOT NULL,
    started_at   BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL,
    stopped_at   BIGINT
);
