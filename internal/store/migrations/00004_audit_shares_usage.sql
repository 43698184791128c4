-- +goose Up
-- The audit log: security-relevant events (token created/deleted, denied
-- requests, trust-policy matches). org_id is '' for events that cannot be
-- attributed to an organization (a request with an unknown token). detail
-- is a JSON object of strings; it never holds a secret. Times are unix ms.
-- Rows are pruned by age and count (internal/audit).
CREATE TABLE audit_events (
    id          TEXT PRIMARY KEY,
    at          BIGINT NOT NULL,
    kind        TEXT NOT NULL,
    org_id      TEXT NOT NULL DEFAULT '',
    project_id  TEXT NOT NULL DEFAULT '',
    actor       TEXT NOT NULL DEFAULT '',
    detail      TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_events_org_at ON audit_events(org_id, at, id);
CREATE INDEX audit_events_at ON audit_events(at, id);

-- A shared build: anyone holding token may read the build's summary at
-- <public url>/shared/<token>. At most one share per build; deleting the
-- row revokes the link.
CREATE TABLE build_shares (
    build_id    TEXT PRIMARY KEY,
    token       TEXT NOT NULL UNIQUE,
    created_by  TEXT NOT NULL DEFAULT '',
    created_at  BIGINT NOT NULL
);

-- Usage sums builds of an organization by creation time; the saved-time
-- estimate looks up a step's last uncached run by name.
CREATE INDEX builds_org_created ON builds(org_id, created_at);
CREATE INDEX build_steps_name ON build_steps(name, completed_at);

-- +goose Down
DROP INDEX build_steps_name;
DROP INDEX builds_org_created;
DROP TABLE build_shares;
DROP TABLE audit_events;
