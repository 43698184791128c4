-- Several control-plane replicas on one database (internal/cluster).
-- replicas: the live ones announce themselves and beat (unix ms); one that
-- stopped beating is dead and its builds are failed or taken over.
-- builds.replica: the replica holding the build's builder lease (client
-- builds) or running it (source builds); "" until one does.
-- builder_placements: which replica runs a project's builder for a
-- platform (its cache is on that replica's disk), so a build acquired
-- through any replica uses it.
-- cluster_secrets: key material every replica shares (the CA, the
-- registry token key), sealed with the operator's cluster key.

-- +goose Up
CREATE TABLE replicas (
    id           TEXT PRIMARY KEY,
    api_url      TEXT NOT NULL,
    gateway_addr TEXT NOT NULL,
    started_at   BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL
);

ALTER TABLE builds ADD COLUMN replica TEXT NOT NULL DEFAULT '';

CREATE TABLE builder_placements (
    project_id TEXT NOT NULL,
    platform   TEXT NOT NULL,
    replica    TEXT NOT NULL,
    placed_at  BIGINT NOT NULL,
    PRIMARY KEY (project_id, platform)
);

CREATE TABLE cluster_secrets (
    name       TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- +goose Down
DROP TABLE cluster_secrets;
DROP TABLE builder_placements;
ALTER TABLE builds DROP COLUMN replica;
DROP TABLE replicas;
