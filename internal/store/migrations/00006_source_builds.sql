-- Builds from uploaded source (kiln.v1.SourceBuildService): customer
-- projects, source builds run by kiln itself, and uploaded contexts.

-- +goose Up
ALTER TABLE projects ADD COLUMN customer_id TEXT NOT NULL DEFAULT '';
-- One project per customer in an organization; this is what makes
-- concurrent first builds of a customer create one project.
CREATE UNIQUE INDEX projects_customer ON projects(org_id, customer_id) WHERE customer_id <> '';

-- kind: client | source. spec: a source build's request (JSON). secrets:
-- sealed with the server's key, cleared when the build ends. image_refs:
-- newline-separated references the image was pushed to.
ALTER TABLE builds ADD COLUMN kind TEXT NOT NULL DEFAULT 'client';
ALTER TABLE builds ADD COLUMN spec TEXT NOT NULL DEFAULT '';
ALTER TABLE builds ADD COLUMN secrets TEXT NOT NULL DEFAULT '';
ALTER TABLE builds ADD COLUMN image_refs TEXT NOT NULL DEFAULT '';
ALTER TABLE builds ADD COLUMN image_digest TEXT NOT NULL DEFAULT '';

-- key: the opaque name the uploader got; blob_key: where the blob store
-- keeps it. Times are unix milliseconds.
CREATE TABLE build_contexts (
    key         TEXT PRIMARY KEY,
    org_id      TEXT NOT NULL,
    project_id  TEXT NOT NULL,
    blob_key    TEXT NOT NULL,
    size        BIGINT NOT NULL DEFAULT 0,
    sha256      TEXT NOT NULL DEFAULT '',
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX build_contexts_expires ON build_contexts(expires_at);
CREATE INDEX build_contexts_project ON build_contexts(project_id);

-- +goose Down
DROP TABLE build_contexts;
ALTER TABLE builds DROP COLUMN image_digest;
ALTER TABLE builds DROP COLUMN image_refs;
ALTER TABLE builds DROP COLUMN secrets;
ALTER TABLE builds DROP COLUMN spec;
ALTER TABLE builds DROP COLUMN kind;
DROP INDEX projects_customer;
ALTER TABLE projects DROP COLUMN customer_id;
