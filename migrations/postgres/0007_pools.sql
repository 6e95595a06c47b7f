-- Pools of servers where runtimes run. A server is this node's own machine (kind `process`,
-- runtimes as local processes) or a Docker daemon (kind `docker`, runtimes in containers), with
-- a capacity that scheduling never exceeds. Each stage runs its new runtimes on one pool; the
-- pool `local`, holding the process server `local`, is every stage's pool until an operator
-- moves it. Pools and servers are named by slugs, which the API uses in its paths.

CREATE TABLE pools (
    name       TEXT PRIMARY KEY,
    -- How a server is picked for a new runtime: `spread` (most room left) or `pack` (least
    -- room left that still fits).
    strategy   TEXT NOT NULL DEFAULT 'spread',
    created_at BIGINT NOT NULL
);

CREATE TABLE servers (
    name          TEXT PRIMARY KEY,
    pool          TEXT NOT NULL REFERENCES pools (name),
    kind          TEXT NOT NULL,
    -- `enabled`, `draining` (no new runtimes; running ones finish) or `disabled`.
    status        TEXT NOT NULL DEFAULT 'enabled',
    -- Docker: the daemon's address (`unix:///var/run/docker.sock`, `tcp://host:2376`), the
    -- client certificate files for TCP with TLS, the network its containers join (`host` or a
    -- named network) and the URL its runtimes reach the platform at.
    docker_url    TEXT,
    tls_ca        TEXT,
    tls_cert      TEXT,
    tls_key       TEXT,
    network       TEXT,
    platform_url  TEXT,
    -- Capacity; NULL means not limited (the process server).
    cpu_millis    BIGINT,
    memory_mb     BIGINT,
    max_runtimes  BIGINT,
    created_at    BIGINT NOT NULL
);

CREATE INDEX servers_by_pool ON servers (pool);

INSERT INTO pools (name, strategy, created_at) VALUES ('local', 'spread', 0);
INSERT INTO servers (name, pool, kind, created_at) VALUES ('local', 'local', 'process', 0);

-- The pool a stage's new runtimes go to (checked by the API: SQLite cannot add a column with a
-- foreign key and a default).
ALTER TABLE stages ADD COLUMN pool TEXT NOT NULL DEFAULT 'local';

-- What each runtime holds of its server's capacity, as its deployment asked when it started.
ALTER TABLE runtimes ADD COLUMN cpu_millis BIGINT NOT NULL DEFAULT 0;
ALTER TABLE runtimes ADD COLUMN memory_mb BIGINT NOT NULL DEFAULT 0;
CREATE INDEX runtimes_by_server ON runtimes (server) WHERE status IN ('starting', 'running', 'stopping');
