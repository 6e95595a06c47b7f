-- The studio's image registry. A version may have a runtime image: linked when a push of a tag
-- naming the version reaches the platform (the builder's own pushes, or a developer's), and
-- pulled by its digest, so a tag moved later never changes what the version runs. A version's
-- image is set once.
ALTER TABLE versions ADD COLUMN image_reference TEXT;
ALTER TABLE versions ADD COLUMN image_digest TEXT;
-- `build` (the platform's builder) or `push` (a developer).
ALTER TABLE versions ADD COLUMN image_source TEXT;
ALTER TABLE versions ADD COLUMN image_pushed_by TEXT;
ALTER TABLE versions ADD COLUMN image_linked_at BIGINT;

-- Every manifest push the registry told the platform of, with what came of it, so that a
-- developer whose tag named no version can see why nothing was linked.
CREATE TABLE image_pushes (
    -- the registry's event id: a notification the registry sends again is recorded once
    id          TEXT PRIMARY KEY,
    received_at BIGINT NOT NULL,
    repository  TEXT NOT NULL,
    tag         TEXT,
    digest      TEXT NOT NULL,
    actor       TEXT,
    -- set when the repository names a project
    project_id  TEXT REFERENCES projects (id) ON DELETE CASCADE,
    version_id  TEXT REFERENCES versions (id) ON DELETE CASCADE,
    -- `linked`, `already_linked` or `ignored`
    outcome     TEXT NOT NULL,
    detail      TEXT NOT NULL
);
CREATE INDEX image_pushes_by_project ON image_pushes (project_id, received_at);
