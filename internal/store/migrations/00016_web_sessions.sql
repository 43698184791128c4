-- The dashboard's sign-ins (internal/web), so that any replica answers a
-- browser signed in at another and a restart signs nobody out.
-- web_sessions: id_hash is the hex SHA-256 of the id in the browser's
-- cookie (what is stored cannot be replayed as a cookie); token_id the
-- token it signed in with, looked up again on every request (its secret
-- is not kept); minted (0/1): a device login made the token for this
-- session, and it is deleted when the session ends. Times are unix ms.
-- web_logins: a browser's pending device login, by the hash of its
-- kiln_login cookie; login_sealed is the login's id sealed with a key
-- derived from that cookie, so the table alone collects no token.

-- +goose Up
CREATE TABLE web_sessions (
    id_hash    TEXT PRIMARY KEY,
    token_id   TEXT NOT NULL,
    csrf       TEXT NOT NULL,
    minted     INTEGER NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    seen_at    BIGINT NOT NULL
);
CREATE INDEX web_sessions_token ON web_sessions(token_id);
CREATE INDEX web_sessions_seen ON web_sessions(seen_at);
CREATE INDEX web_sessions_created ON web_sessions(created_at);

CREATE TABLE web_logins (
    id_hash      TEXT PRIMARY KEY,
    login_sealed TEXT NOT NULL,
    approval_id  TEXT NOT NULL,
    code         TEXT NOT NULL,
    expires_at   BIGINT NOT NULL
);
CREATE INDEX web_logins_expires ON web_logins(expires_at);

-- +goose Down
DROP TABLE web_logins;
DROP TABLE web_sessions;
