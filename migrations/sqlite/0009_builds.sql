-- The builder's jobs: a version's runtime image made from its bundle and pushed to the studio's
-- registry. A build runs on the node that claimed it (`node_id`); one interrupted by a restart
-- is queued again when its node starts, and fails after a few such attempts.
CREATE TABLE builds (
    id          TEXT PRIMARY KEY,
    project_id  TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    version_id  TEXT NOT NULL REFERENCES versions (id) ON DELETE CASCADE,
    status      TEXT NOT NULL CHECK (status IN ('queued', 'building', 'pushing', 'done', 'failed')),
    node_id     TEXT,
    attempts    BIGINT NOT NULL DEFAULT 0,
    reference   TEXT,
    digest      TEXT,
    error       TEXT,
    -- what the builder did, line by line (bounded)
    log         TEXT NOT NULL DEFAULT '',
    created_by  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    started_at  BIGINT,
    finished_at BIGINT
);
CREATE INDEX builds_by_status ON builds (status, created_at);
CREATE INDEX builds_by_version ON builds (version_id, created_at);
