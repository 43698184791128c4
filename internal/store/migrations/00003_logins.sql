-- +goose Up
-- A device login (depot.cli.v1beta1.LoginService): a client waits on it
-- until an administrator approves it, then receives a new organization token
-- once. id_hash is the hex SHA-256 of the id the client holds (the id
-- collects the token, so it is stored like a token secret); approval_id is
-- the handle in the approve URL, which grants nothing without an org token.
-- status: pending | approved | denied | finished. Times are unix ms.
CREATE TABLE logins (
    id_hash      TEXT PRIMARY KEY,
    approval_id  TEXT NOT NULL UNIQUE,
    status       TEXT NOT NULL,
    org_id       TEXT NOT NULL DEFAULT '',
    approved_by  TEXT NOT NULL DEFAULT '',
    token_id     TEXT NOT NULL DEFAULT '',
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX logins_expires ON logins(expires_at);

-- +goose Down
DROP TABLE logins;
