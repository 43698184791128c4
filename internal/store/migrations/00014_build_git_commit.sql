-- The commit a build from a git context built: resolved on the builder
-- before the build and pinned (engine/git.go). NULL for builds of a local
-- or uploaded context, and until the commit is known.

-- +goose Up
ALTER TABLE builds ADD COLUMN git_commit TEXT;

-- +goose Down
ALTER TABLE builds DROP COLUMN git_commit;
