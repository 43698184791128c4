-- +goose Up
-- A trust policy lets CI jobs of one repository (or pipeline) authenticate
-- to one project with their provider's OIDC token. provider: github |
-- circleci | buildkite | gitlab; owner and repo are the two claims matched
-- (see store.TrustPolicy for which claim is which).
CREATE TABLE trust_policies (
    id          TEXT PRIMARY KEY,
    project_id  TEXT NOT NULL,
    org_id      TEXT NOT NULL,
    provider    TEXT NOT NULL,
    owner       TEXT NOT NULL,
    repo        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    UNIQUE (project_id, provider, owner, repo)
);
-- Matching is case-insensitive (GitHub and GitLab names are); the fields
-- are ASCII by validation, so lower() folds them completely.
CREATE INDEX trust_policies_match ON trust_policies(provider, lower(owner));
CREATE INDEX trust_policies_project ON trust_policies(project_id);

-- +goose Down
DROP TABLE trust_policies;
