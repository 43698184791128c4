// Package oidc verifies the OIDC ID tokens CI providers give their jobs
// (GitHub Actions, CircleCI, Buildkite, GitLab CI) and extracts the two
// claims kiln's trust policies match on.
//
// A token is accepted only if its issuer is one configured here (never an
// issuer the token names on its own: keys are fetched only from configured
// issuers), its signature verifies with a key of the issuer's JWKS (RSA or
// ECDSA; "none" and HMAC are refused), its audience contains the configured
// audience, and exp, nbf and iat hold within a minute of clock skew.
//
// JWKS are found through the issuer's /.well-known/openid-configuration,
// cached, and fetched again when a token names an unknown key id (at most
// once per MinRefresh per issuer) or when the keys are older than
// RefreshInterval, so rotation and removal are picked up without a
// restart. Fetches run outside the locks verifications take, one per
// issuer at a time. Configured issuers are never evicted or rate limited;
// per-organization issuers (CircleCI) are fetched only when Config.Wanted
// says a trust policy names the organization, within their own bound.
//
// The package depends on errdefs and on internal/auth's Identity only: it
// knows nothing of the store, of trust policies or of principals
// (internal/auth matches identities to policies, and does not import this
// package: it is the adapter that fetches keys over HTTP) and it logs
// nothing.
package oidc
