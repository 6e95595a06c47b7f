-- Tenants, projects, stages, bundles, versions, deployments, permission grants, the audit log
-- and idempotency keys. Aliases are unique within their parent (tenants: globally).

CREATE TABLE tenants (
    id         TEXT PRIMARY KEY,
    alias      TEXT UNIQUE,
    name       TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE projects (
    id         TEXT PRIMARY KEY,
    tenant_id  TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    alias      TEXT,
    name       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (tenant_id, alias)
);

CREATE TABLE stages (
    id         TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    alias      TEXT,
    name       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (project_id, alias)
);

-- Bundle archives, content-addressed so that every node reads the same bytes.
CREATE TABLE bundles (
    sha256     TEXT PRIMARY KEY,
    content    BLOB NOT NULL,
    size       BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE versions (
    id            TEXT PRIMARY KEY,
    project_id    TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    number        BIGINT NOT NULL,
    bundle_sha256 TEXT NOT NULL REFERENCES bundles (sha256),
    -- the validated manifest as JSON
    manifest      TEXT NOT NULL,
    note          TEXT,
    created_by    TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    deleted_at    BIGINT,
    UNIQUE (project_id, number)
);

CREATE TABLE deployments (
    id          TEXT PRIMARY KEY,
    stage_id    TEXT NOT NULL REFERENCES stages (id) ON DELETE CASCADE,
    version_id  TEXT NOT NULL REFERENCES versions (id) ON DELETE CASCADE,
    status      TEXT NOT NULL CHECK (status IN ('active', 'draining', 'closed')),
    -- the effective deployment config (version defaults with this deployment's overrides) as JSON
    config      TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    draining_at BIGINT,
    closed_at   BIGINT
);

CREATE UNIQUE INDEX deployments_one_active_per_stage ON deployments (stage_id) WHERE status = 'active';
CREATE INDEX deployments_by_version ON deployments (version_id);

CREATE TABLE grants (
    account_id TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    scope_kind TEXT NOT NULL CHECK (scope_kind IN ('tenant', 'project', 'stage')),
    scope_id   TEXT NOT NULL,
    role       TEXT NOT NULL CHECK (role IN ('viewer', 'manager')),
    -- the tenant the scope belongs to: a developer's grants in a tenant load in one query
    tenant_id  TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    granted_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (account_id, scope_kind, scope_id, role)
);

CREATE INDEX grants_by_tenant ON grants (tenant_id, account_id);

CREATE TABLE audit_log (
    id          TEXT PRIMARY KEY,
    at          BIGINT NOT NULL,
    actor_id    TEXT NOT NULL,
    actor_role  TEXT NOT NULL,
    action      TEXT NOT NULL,
    target_kind TEXT NOT NULL,
    target_id   TEXT NOT NULL,
    tenant_id   TEXT,
    project_id  TEXT,
    details     TEXT NOT NULL
);

CREATE INDEX audit_log_by_tenant ON audit_log (tenant_id, id);

CREATE TABLE idempotency_keys (
    account_id  TEXT NOT NULL,
    key         TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status      BIGINT,
    response    TEXT,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (account_id, key)
);
