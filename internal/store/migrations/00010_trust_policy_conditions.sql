-- kiln's trust policy extensions (kiln.v1.TrustPolicyService; see
-- auth.TrustPolicy): the provider's immutable ids a policy pins (GitHub
-- repository_id and repository_owner_id, GitLab project_id and
-- namespace_id), the job context it restricts (ref and workflow are globs;
-- ref_type, event and environment exact), and the role it grants ('' or
-- 'build': the default; 'project': a project token's rights). '' restricts
-- nothing.
--
-- A project may now hold several policies for one repository that differ
-- in their conditions (main on push; tags v*), so the uniqueness covers
-- them all. SQLite cannot change a table's constraints in place: the table
-- is rebuilt.

-- +goose Up
CREATE TABLE trust_policies_new (
    id           TEXT PRIMARY KEY,
    project_id   TEXT NOT NULL,
    org_id       TEXT NOT NULL,
    provider     TEXT NOT NULL,
    owner        TEXT NOT NULL,
    repo         TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    repo_id      TEXT NOT NULL DEFAULT '',
    owner_id     TEXT NOT NULL DEFAULT '',
    ref          TEXT NOT NULL DEFAULT '',
    ref_type     TEXT NOT NULL DEFAULT '',
    event        TEXT NOT NULL DEFAULT '',
    environment  TEXT NOT NULL DEFAULT '',
    workflow     TEXT NOT NULL DEFAULT '',
    role         TEXT NOT NULL DEFAULT '',
    UNIQUE (project_id, provider, owner, repo, repo_id, owner_id, ref, ref_type, event, environment, workflow, role)
);
INSERT INTO trust_policies_new (id, project_id, org_id, provider, owner, repo, created_at)
    SELECT id, project_id, org_id, provider, owner, repo, created_at FROM trust_policies;
DROP TABLE trust_policies;
ALTER TABLE trust_policies_new RENAME TO trust_policies;
CREATE INDEX trust_policies_match ON trust_policies(provider, lower(owner));
CREATE INDEX trust_policies_project ON trust_policies(project_id);

-- +goose Down
CREATE TABLE trust_policies_old (
    id          TEXT PRIMARY KEY,
    project_id  TEXT NOT NULL,
    org_id      TEXT NOT NULL,
    provider    TEXT NOT NULL,
    owner       TEXT NOT NULL,
    repo        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    UNIQUE (project_id, provider, owner, repo)
);
-- Policies with conditions would widen to their names alone: drop them.
INSERT INTO trust_policies_old (id, project_id, org_id, provider, owner, repo, created_at)
    SELECT id, project_id, org_id, provider, owner, repo, created_at FROM trust_policies
    WHERE repo_id = '' AND owner_id = '' AND ref = '' AND ref_type = '' AND event = ''
      AND environment = '' AND workflow = '' AND role = '';
DROP TABLE trust_policies;
ALTER TABLE trust_policies_old RENAME TO trust_policies;
CREATE INDEX trust_policies_match ON trust_policies(provider, lower(owner));
CREATE INDEX trust_policies_project ON trust_policies(project_id);
