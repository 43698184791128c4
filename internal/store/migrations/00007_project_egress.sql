-- The operator's per-project egress allow-list: CIDRs (canonical, e.g.
-- "10.9.0.0/16" or "fd00:9::/64") that the project's RUN steps may reach
-- although kiln's egress policy blocks private ranges by default.
-- Newline-separated; '' for none.

-- +goose Up
ALTER TABLE projects ADD COLUMN egress_allow TEXT NOT NULL DEFAULT '';

-- +goose Down
ALTER TABLE projects DROP COLUMN egress_allow;
