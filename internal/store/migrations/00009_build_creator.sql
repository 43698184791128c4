-- created_by: the id of the stored token that created a client build ('' for
-- OIDC callers and source builds). Deleting that token ends the build and
-- cuts its builder connections: nothing a token made outlives it.

-- +goose Up
ALTER TABLE builds ADD COLUMN created_by TEXT NOT NULL DEFAULT '';
CREATE INDEX builds_created_by ON builds(created_by) WHERE created_by <> '';

-- +goose Down
DROP INDEX builds_created_by;
ALTER TABLE builds DROP COLUMN created_by;
