-- +goose Up
-- kiln's registry index. The manifests and blobs themselves live in the
-- registry's storage (DATA/registry or S3); these rows say what was pushed
-- when (retention, ListImages) and which manifests refer to which (the OCI
-- referrers API). They are written after a push succeeded and rebuilt by
-- the registry's garbage collector for anything storage holds that they
-- miss. repo is the full repository name ("<project-id>[/<name>]"); digests
-- are "sha256:<hex>"; times are unix ms.
CREATE TABLE registry_manifests (
    repo           TEXT NOT NULL,
    digest         TEXT NOT NULL,
    project_id     TEXT NOT NULL,
    media_type     TEXT NOT NULL DEFAULT '',
    -- The manifest's artifactType, else its config's media type (what the
    -- referrers API reports); '' for an index without one.
    artifact_type  TEXT NOT NULL DEFAULT '',
    -- The digest in the manifest's "subject" field; '' when it has none.
    subject        TEXT NOT NULL DEFAULT '',
    size           BIGINT NOT NULL DEFAULT 0,
    -- size plus what the manifest references (config and layers; an
    -- index: its manifests' totals), as far as known at push time.
    total_size     BIGINT NOT NULL DEFAULT 0,
    -- The manifest's annotations as a JSON object; '' when none.
    annotations    TEXT NOT NULL DEFAULT '',
    pushed_at      BIGINT NOT NULL,
    PRIMARY KEY (repo, digest)
);
CREATE INDEX registry_manifests_subject ON registry_manifests(repo, subject);
CREATE INDEX registry_manifests_project ON registry_manifests(project_id);

-- A tag points at one manifest of its repository; pushed_at is when it was
-- last pushed (or moved), which starts its retention.
CREATE TABLE registry_tags (
    repo        TEXT NOT NULL,
    tag         TEXT NOT NULL,
    project_id  TEXT NOT NULL,
    digest      TEXT NOT NULL,
    pushed_at   BIGINT NOT NULL,
    PRIMARY KEY (repo, tag)
);
CREATE INDEX registry_tags_project ON registry_tags(project_id, repo, tag);
CREATE INDEX registry_tags_digest ON registry_tags(repo, digest);

-- Per-project registry settings; a missing row means the server defaults.
CREATE TABLE registry_settings (
    project_id         TEXT PRIMARY KEY,
    -- Saved images expire this long after they were pushed; 0: the
    -- server's default.
    retention_seconds  BIGINT NOT NULL DEFAULT 0
);

-- +goose Down
DROP TABLE registry_settings;
DROP INDEX registry_tags_digest;
DROP INDEX registry_tags_project;
DROP TABLE registry_tags;
DROP INDEX registry_manifests_project;
DROP INDEX registry_manifests_subject;
DROP TABLE registry_manifests;
