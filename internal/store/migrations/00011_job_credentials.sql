-- What a CI job (an OIDC principal) obtains is bound to the trust policies
-- that admitted it: trust_policy_ids (space-separated, '' for everything
-- else) lists them on the tokens it minted and on the builds it started,
-- and removing any of them deletes those tokens and ends those builds.
-- until_at (unix ms, 0: none) is when the job's own token expired: the
-- build's builder access and certificates end then. A token's bound is its
-- expires_at.

-- +goose Up
ALTER TABLE tokens ADD COLUMN trust_policy_ids TEXT NOT NULL DEFAULT '';
ALTER TABLE builds ADD COLUMN trust_policy_ids TEXT NOT NULL DEFAULT '';
ALTER TABLE builds ADD COLUMN until_at BIGINT NOT NULL DEFAULT 0;

-- +goose Down
ALTER TABLE builds DROP COLUMN until_at;
ALTER TABLE builds DROP COLUMN trust_policy_ids;
ALTER TABLE tokens DROP COLUMN trust_policy_ids;
