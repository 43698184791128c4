-- +goose Up
CREATE TABLE organizations (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE projects (
    id              TEXT PRIMARY KEY,
    org_id          TEXT NOT NULL REFERENCES organizations(id),
    name            TEXT NOT NULL,
    region_id       TEXT NOT NULL DEFAULT '',
    hardware        INTEGER NOT NULL DEFAULT 0,
    keep_gb         INTEGER NOT NULL DEFAULT 0,
    keep_days       INTEGER NOT NULL DEFAULT 0,
    created_at      BIGINT NOT NULL
);
CREATE INDEX projects_org ON projects(org_id);

-- kind: org | project | build. secret_hash is the hex SHA-256 of the token;
-- the token itself is shown once and never stored.
CREATE TABLE tokens (
    id           TEXT PRIMARY KEY,
    kind         TEXT NOT NULL,
    org_id       TEXT NOT NULL,
    project_id   TEXT NOT NULL DEFAULT '',
    build_id     TEXT NOT NULL DEFAULT '',
    description  TEXT NOT NULL DEFAULT '',
    secret_hash  TEXT NOT NULL UNIQUE,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX tokens_project ON tokens(project_id);

-- status: running | succeeded | failed | canceled. Times are unix
-- milliseconds; 0 means unset.
CREATE TABLE builds (
    id              TEXT PRIMARY KEY,
    project_id      TEXT NOT NULL,
    org_id          TEXT NOT NULL,
    status          TEXT NOT NULL,
    command         INTEGER NOT NULL DEFAULT 0,
    options         TEXT NOT NULL DEFAULT '',
    error           TEXT NOT NULL DEFAULT '',
    platforms       TEXT NOT NULL DEFAULT '',
    created_at      BIGINT NOT NULL,
    started_at      BIGINT NOT NULL DEFAULT 0,
    finished_at     BIGINT NOT NULL DEFAULT 0,
    last_health_at  BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX builds_project_created ON builds(project_id, created_at);
CREATE INDEX builds_status ON builds(status);

CREATE TABLE build_steps (
    build_id      TEXT NOT NULL,
    digest        TEXT NOT NULL,
    seq           INTEGER NOT NULL,
    name          TEXT NOT NULL,
    cached        INTEGER NOT NULL DEFAULT 0,
    started_at    BIGINT NOT NULL DEFAULT 0,
    completed_at  BIGINT NOT NULL DEFAULT 0,
    error         TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (build_id, digest)
);

CREATE TABLE build_logs (
    build_id   TEXT NOT NULL,
    digest     TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    at         BIGINT NOT NULL,
    message    TEXT NOT NULL,
    PRIMARY KEY (build_id, digest, seq)
);

-- +goose Down
DROP TABLE build_logs;
DROP TABLE build_steps;
DROP TABLE builds;
DROP TABLE tokens;
DROP TABLE projects;
DROP TABLE organizations;
