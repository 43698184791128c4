-- What a build's builder used while the build held it (internal/build
-- resources.go): one row per sample (about a second each; bounded per build)
-- and events (an OOM kill, memory over 90 % of the builder's limit). The
-- numbers are the builder's: builds sharing a builder each get the same rows.
-- Times are unix ms; cpu_millicores is CPU time over wall time, x1000.

-- +goose Up
CREATE TABLE build_resource_samples (
    build_id           TEXT NOT NULL,
    at                 BIGINT NOT NULL,
    interval_ms        BIGINT NOT NULL DEFAULT 0,
    cpu_millicores     BIGINT NOT NULL DEFAULT 0,
    memory_bytes       BIGINT NOT NULL DEFAULT 0,
    memory_peak_bytes  BIGINT NOT NULL DEFAULT 0,
    memory_limit_bytes BIGINT NOT NULL DEFAULT 0,
    io_read_bytes      BIGINT NOT NULL DEFAULT 0,
    io_write_bytes     BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (build_id, at)
);

CREATE TABLE build_resource_events (
    build_id           TEXT NOT NULL,
    at                 BIGINT NOT NULL,
    kind               TEXT NOT NULL,
    message            TEXT NOT NULL,
    count              BIGINT NOT NULL DEFAULT 0,
    memory_bytes       BIGINT NOT NULL DEFAULT 0,
    memory_limit_bytes BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (build_id, at, kind)
);

-- +goose Down
DROP TABLE build_resource_events;
DROP TABLE build_resource_samples;
