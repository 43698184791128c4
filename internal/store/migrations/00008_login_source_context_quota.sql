-- Limits a hostile tenant runs into (issue 12).

-- +goose Up
-- source: the address a device login was started from (an IPv4 address,
-- or an IPv6 /64), so one address can't take every pending slot.
ALTER TABLE logins ADD COLUMN source TEXT NOT NULL DEFAULT '';
CREATE INDEX logins_source ON logins(source, expires_at);

-- charged: bytes a context counts against its project's upload quota: the
-- declared size, or the most its upload URL accepts, until settled (its
-- stored size is known, or its URL expired without an upload).
ALTER TABLE build_contexts ADD COLUMN charged BIGINT NOT NULL DEFAULT 0;
ALTER TABLE build_contexts ADD COLUMN settled INTEGER NOT NULL DEFAULT 0;
UPDATE build_contexts SET charged = size;

-- +goose Down
ALTER TABLE build_contexts DROP COLUMN settled;
ALTER TABLE build_contexts DROP COLUMN charged;
DROP INDEX logins_source;
ALTER TABLE logins DROP COLUMN source;
