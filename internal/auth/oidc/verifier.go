package oidc

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/errdefs"
)

// Provider and Identity are auth's: what a verified token says is the
// domain's vocabulary, so internal/auth need not import this package (nor
// net/http through it).
type (
	Provider = auth.Provider
	Identity = auth.Identity
)

// The CI systems, as Providers.
const (
	GitHub    Provider = auth.ProviderGitHub
	CircleCI  Provider = auth.ProviderCircleCI
	Buildkite Provider = auth.ProviderBuildkite
	GitLab    Provider = auth.ProviderGitLab
)

// Public issuers, the defaults of `kiln serve`'s --oidc-*-issuer flags.
const (
	DefaultGitHubIssuer    = "https://token.actions.githubusercontent.com"
	DefaultBuildkiteIssuer = "https://agent.buildkite.com"
	DefaultGitLabIssuer    = "https://gitlab.com"
	// CircleCI gives every organization its own issuer,
	// https://oidc.circleci.com/org/<organization id>; this is their prefix.
	DefaultCircleCIIssuerPrefix = "https://oidc.circleci.com/org/"
	// DefaultAudience is the audience kiln expects unless configured: CI
	// jobs request their token for it (GitHub: core.getIDToken("kiln");
	// GitLab: id_tokens: KILN_TOKEN: aud: kiln; CircleCI: circleci run
	// oidc get --claims '{"aud":"kiln"}'; Buildkite: buildkite-agent oidc
	// request-token --audience kiln).
	DefaultAudience = "kiln"
)

// Why a token was refused. Verify's errors wrap one of these and an
// errdefs kind (ErrUnauthenticated, or ErrUnavailable when an issuer's keys
// cannot be fetched).
var (
	ErrMalformed       = errors.New("OIDC token is malformed")
	ErrAlgorithm       = errors.New("OIDC token signing algorithm is not allowed")
	ErrUnknownIssuer   = errors.New("OIDC token issuer is not trusted")
	ErrUnknownKey      = errors.New("OIDC token key id is not in the issuer's key set")
	ErrBadSignature    = errors.New("OIDC token signature is invalid")
	ErrExpired         = errors.New("OIDC token has expired")
	ErrNotYetValid     = errors.New("OIDC token is not valid yet (nbf)")
	ErrIssuedInFuture  = errors.New("OIDC token was issued in the future (iat)")
	ErrAudience        = errors.New("OIDC token audience does not match")
	ErrClaims          = errors.New("OIDC token lacks a required claim")
	ErrKeysUnavailable = errors.New("cannot fetch the OIDC issuer's signing keys")
	ErrNoPolicy        = errors.New("no trust policy names the OIDC token's issuer")
	ErrLifetime        = errors.New("OIDC token lives longer than kiln accepts")
	ErrCritical        = errors.New("OIDC token has critical header extensions kiln does not understand")
)

// Limits on hostile input.
const (
	MaxTokenBytes = 16 << 10 // real CI tokens are 1-3 KiB
	maxClaimLen   = 512
	// ClockSkew is tolerated on exp, nbf and iat.
	ClockSkew = 60 * time.Second
	// MaxLifetime bounds exp - iat, and how far ahead of now exp may be
	// (CI tokens live minutes to hours; a token valid for years is a
	// stolen signing key's or a misconfigured issuer's).
	MaxLifetime = 24 * time.Hour
)

// Config says which issuers and audience are trusted. An empty issuer
// disables that provider.
type Config struct {
	Audience             string
	GitHubIssuer         string
	GitLabIssuer         string
	BuildkiteIssuer      string
	CircleCIIssuerPrefix string // issuers are this prefix + an organization id

	// HTTPClient fetches discovery documents and JWKS; nil: a client with a
	// 10 s timeout that follows no redirects.
	HTTPClient *http.Client
	// MinRefresh is the least time between two JWKS fetches of one issuer
	// (an unknown key id triggers a fetch); 0: 10 s. Negative: no limit
	// (tests).
	MinRefresh time.Duration
	// RefreshInterval is how often an issuer's key set is fetched again
	// while tokens of it arrive, so a key the issuer removed stops
	// verifying: a verification after RefreshInterval starts a fetch and
	// uses the cached keys meanwhile; one after twice RefreshInterval
	// without a fetch attempt (an idle server) waits for the fetch. 0: 5 min.
	RefreshInterval time.Duration
	// Wanted, if set, is asked before kiln first fetches the keys of an
	// issuer that is not configured exactly (CircleCI's per-organization
	// issuers): false refuses the token without a fetch (ErrNoPolicy), an
	// error refuses it as unavailable. kiln serve answers whether a trust
	// policy names the organization. nil: every such issuer is wanted.
	Wanted func(ctx context.Context, p Provider, issuer string) (bool, error)
	// Now is the clock; nil: time.Now.
	Now func() time.Time
}

// DefaultConfig trusts the public issuers of all four providers.
func DefaultConfig() Config {
	return Config{
		Audience:             DefaultAudience,
		GitHubIssuer:         DefaultGitHubIssuer,
		GitLabIssuer:         DefaultGitLabIssuer,
		BuildkiteIssuer:      DefaultBuildkiteIssuer,
		CircleCIIssuerPrefix: DefaultCircleCIIssuerPrefix,
	}
}

// Verifier verifies OIDC tokens. It is safe for concurrent use.
type Verifier struct {
	cfg     Config
	issuers map[string]Provider // exact issuers
	keys    *keyCache
}

var circleOrgID = regexp.MustCompile(`^[A-Za-z0-9-]{1,64}$`)

// NewVerifier checks cfg and returns a verifier.
func NewVerifier(cfg Config) (*Verifier, error) {
	v := &Verifier{cfg: cfg, issuers: map[string]Provider{}}
	for _, is := range []struct {
		p   Provider
		url string
	}{{GitHub, cfg.GitHubIssuer}, {GitLab, cfg.GitLabIssuer}, {Buildkite, cfg.BuildkiteIssuer}} {
		if is.url == "" {
			continue
		}
		if err := checkIssuerURL(is.url); err != nil {
			return nil, fmt.Errorf("%s issuer: %w", is.p, err)
		}
		if prev, dup := v.issuers[is.url]; dup {
			return nil, fmt.Errorf("issuer %q configured for both %s and %s: %w", is.url, prev, is.p, errdefs.ErrInvalid)
		}
		v.issuers[is.url] = is.p
	}
	if p := cfg.CircleCIIssuerPrefix; p != "" {
		if !strings.HasSuffix(p, "/") {
			return nil, fmt.Errorf("CircleCI issuer prefix %q must end with '/': %w", p, errdefs.ErrInvalid)
		}
		if err := checkIssuerURL(p + "x"); err != nil {
			return nil, fmt.Errorf("circleci issuer prefix: %w", err)
		}
	}
	if cfg.Audience == "" && (len(v.issuers) > 0 || cfg.CircleCIIssuerPrefix != "") {
		// Without an audience any token the provider mints for any service
		// (a cloud login, another tool) would be accepted here.
		return nil, fmt.Errorf("an OIDC audience is required: %w", errdefs.ErrInvalid)
	}
	if v.cfg.Now == nil {
		v.cfg.Now = time.Now
	}
	if v.cfg.MinRefresh == 0 {
		v.cfg.MinRefresh = 10 * time.Second
	}
	if v.cfg.RefreshInterval <= 0 {
		v.cfg.RefreshInterval = 5 * time.Minute
	}
	client := cfg.HTTPClient
	if client == nil {
		client = &http.Client{
			Timeout: 10 * time.Second,
			// Keys come from where the issuer says, not from where a
			// redirect would take the request.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	fixed := make([]string, 0, len(v.issuers))
	for iss := range v.issuers {
		fixed = append(fixed, iss)
	}
	v.keys = newKeyCache(client, v.cfg.Now, v.cfg.MinRefresh, v.cfg.RefreshInterval, fixed, cfg.Wanted)
	return v, nil
}

// checkIssuerURL accepts https URLs, and http only on loopback (a local
// issuer for development and tests).
func checkIssuerURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return fmt.Errorf("%q is not an issuer URL (https://host[/path]): %w", s, errdefs.ErrInvalid)
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		if isLoopback(u.Hostname()) {
			return nil
		}
	}
	return fmt.Errorf("issuer %q must use https (plain http only on loopback): %w", s, errdefs.ErrInvalid)
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// provider returns who issued iss, or "" if nobody configured does.
func (v *Verifier) provider(iss string) Provider {
	if p, ok := v.issuers[iss]; ok {
		return p
	}
	if pre := v.cfg.CircleCIIssuerPrefix; pre != "" && strings.HasPrefix(iss, pre) && circleOrgID.MatchString(iss[len(pre):]) {
		return CircleCI
	}
	return ""
}

func unauth(reason error, format string, args ...any) error {
	msg := reason.Error()
	if format != "" {
		msg += ": " + fmt.Sprintf(format, args...)
	}
	return &verifyError{msg: msg, reason: reason, kind: errdefs.ErrUnauthenticated}
}

// verifyError carries a reason (ErrExpired, …) and an errdefs kind.
type verifyError struct {
	msg    string
	reason error
	kind   error
}

func (e *verifyError) Error() string   { return e.msg }
func (e *verifyError) Unwrap() []error { return []error{e.reason, e.kind} }

// quote shows an attacker-chosen value in a message, bounded.
func quote(s string) string {
	if len(s) > 100 {
		s = s[:100] + "…"
	}
	return fmt.Sprintf("%q", s)
}

// Verify checks raw and returns the job's identity.
func (v *Verifier) Verify(ctx context.Context, raw string) (Identity, error) {
	if len(raw) > MaxTokenBytes {
		return Identity{}, unauth(ErrMalformed, "larger than %d bytes", MaxTokenBytes)
	}
	if !auth.LooksLikeJWT(raw) {
		return Identity{}, unauth(ErrMalformed, "not a compact JWT")
	}
	var (
		keyErr   error
		provider Provider
		issuer   string
	)
	keyfunc := func(t *jwt.Token) (any, error) {
		alg, _ := t.Header["alg"].(string)
		if !allowedAlg[alg] {
			keyErr = unauth(ErrAlgorithm, "%s (want RS256, ES256 or another RSA/ECDSA algorithm)", quote(alg))
			return nil, keyErr
		}
		iss, err := t.Claims.GetIssuer()
		if err != nil || iss == "" {
			keyErr = unauth(ErrClaims, "iss")
			return nil, keyErr
		}
		if provider = v.provider(iss); provider == "" {
			keyErr = unauth(ErrUnknownIssuer, "%s", quote(iss))
			return nil, keyErr
		}
		issuer = iss
		if _, ok := t.Header["crit"]; ok {
			// RFC 7515 4.1.11: a recipient must refuse critical extensions
			// it does not understand, and kiln understands none.
			keyErr = unauth(ErrCritical, "crit %s", quote(fmt.Sprint(t.Header["crit"])))
			return nil, keyErr
		}
		if keyErr = v.checkLifetime(t.Claims); keyErr != nil {
			return nil, keyErr
		}
		kid, _ := t.Header["kid"].(string)
		if len(kid) > 256 {
			keyErr = unauth(ErrMalformed, "key id longer than 256 bytes")
			return nil, keyErr
		}
		keys, err := v.keys.get(ctx, provider, iss, kid)
		if err != nil {
			keyErr = err
			return nil, err
		}
		var usable []jwt.VerificationKey
		for _, k := range keys {
			if k.fits(alg) {
				usable = append(usable, k.key)
			}
		}
		if len(usable) == 0 {
			keyErr = unauth(ErrUnknownKey, "no %s key with id %s", alg, quote(kid))
			return nil, keyErr
		}
		return jwt.VerificationKeySet{Keys: usable}, nil
	}
	parser := jwt.NewParser(
		jwt.WithAudience(v.cfg.Audience),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithLeeway(ClockSkew),
		jwt.WithTimeFunc(v.cfg.Now),
	)
	claims := jwt.MapClaims{}
	tok, err := parser.ParseWithClaims(raw, claims, keyfunc)
	switch {
	case keyErr != nil:
		return Identity{}, keyErr
	case err == nil:
	case errors.Is(err, jwt.ErrTokenMalformed):
		return Identity{}, unauth(ErrMalformed, "")
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		// The header names no algorithm the library knows (or none at all).
		alg := ""
		if tok != nil {
			alg, _ = tok.Header["alg"].(string)
		}
		return Identity{}, unauth(ErrAlgorithm, "%s", quote(alg))
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return Identity{}, unauth(ErrBadSignature, "")
	case errors.Is(err, jwt.ErrTokenExpired):
		exp, _ := claims.GetExpirationTime()
		if exp != nil {
			return Identity{}, unauth(ErrExpired, "exp %s", exp.UTC().Format(time.RFC3339))
		}
		return Identity{}, unauth(ErrExpired, "")
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return Identity{}, unauth(ErrNotYetValid, "")
	case errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return Identity{}, unauth(ErrIssuedInFuture, "")
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		aud, _ := claims.GetAudience()
		return Identity{}, unauth(ErrAudience, "got %s, want %q", quote(strings.Join(aud, ",")), v.cfg.Audience)
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return Identity{}, unauth(ErrClaims, "exp and aud are required")
	default:
		// Claims of the wrong JSON type (exp as a string, …).
		return Identity{}, unauth(ErrMalformed, "bad registered claims")
	}
	return v.identity(provider, issuer, claims)
}

// checkLifetime refuses tokens valid for longer than MaxLifetime: exp -
// iat, and exp - now (a token without iat). It runs before the issuer's
// keys are fetched; the signature is checked after.
func (v *Verifier) checkLifetime(claims jwt.Claims) error {
	exp, err := claims.GetExpirationTime()
	if err != nil || exp == nil {
		return nil // the parser refuses it: exp is required
	}
	if iat, err := claims.GetIssuedAt(); err == nil && iat != nil && exp.Sub(iat.Time) > MaxLifetime {
		return unauth(ErrLifetime, "exp is %s after iat (at most %s)", exp.Sub(iat.Time).Round(time.Second), MaxLifetime)
	}
	if ahead := exp.Sub(v.cfg.Now()); ahead > MaxLifetime+ClockSkew {
		return unauth(ErrLifetime, "exp is %s ahead (at most %s)", ahead.Round(time.Second), MaxLifetime)
	}
	return nil
}

// identity reads the provider's claims from verified claims.
func (v *Verifier) identity(p Provider, iss string, claims jwt.MapClaims) (Identity, error) {
	names := map[Provider][2]string{
		GitHub:    {"repository_owner", "repository"},
		CircleCI:  {"oidc.circleci.com/org-id", "oidc.circleci.com/project-id"},
		Buildkite: {"organization_slug", "pipeline_slug"},
		GitLab:    {"namespace_path", "project_path"},
	}[p]
	var vals [2]string
	for i, name := range names {
		s, ok := claims[name].(string)
		if !ok || s == "" || len(s) > maxClaimLen {
			return Identity{}, unauth(ErrClaims, "%s tokens carry %q", p, name)
		}
		vals[i] = s
	}
	sub, _ := claims["sub"].(string)
	if len(sub) > maxClaimLen {
		return Identity{}, unauth(ErrMalformed, "sub longer than %d bytes", maxClaimLen)
	}
	id := Identity{Provider: p, Issuer: iss, Subject: sub, Owner: vals[0], Repo: vals[1]}
	// The ids and job context a policy may pin or restrict. Absent is
	// "" (a policy that sets the condition then refuses the job); present
	// but not a string (or, for ids, an integer) is a malformed token.
	type claim struct {
		name string
		to   *string
	}
	var extra []claim
	switch p {
	case GitHub:
		extra = []claim{{"repository_id", &id.RepoID}, {"repository_owner_id", &id.OwnerID},
			{"ref", &id.Ref}, {"ref_type", &id.RefType}, {"event_name", &id.Event},
			{"environment", &id.Environment}, {"job_workflow_ref", &id.Workflow}}
	case GitLab:
		extra = []claim{{"project_id", &id.RepoID}, {"namespace_id", &id.OwnerID},
			{"ref", &id.Ref}, {"ref_type", &id.RefType}, {"pipeline_source", &id.Event},
			{"environment", &id.Environment}}
	}
	for _, c := range extra {
		s, err := claimString(claims, c.name)
		if err != nil {
			return Identity{}, unauth(ErrClaims, "%s token: %v", p, err)
		}
		*c.to = s
	}
	if exp, _ := claims.GetExpirationTime(); exp != nil {
		id.ExpiresAt = exp.Time
	}
	if p == CircleCI && iss[len(v.cfg.CircleCIIssuerPrefix):] != id.Owner {
		// The issuer is per organization: a token naming another
		// organization than the one that signed it is forged or broken.
		return Identity{}, unauth(ErrClaims, "issuer and oidc.circleci.com/org-id name different organizations")
	}
	return id, nil
}

// claimString reads an optional claim as a string: "" when absent; an
// integral number as its decimal digits (ids are strings in GitHub's and
// GitLab's tokens, but a number must not be a way around a pinned id).
func claimString(claims jwt.MapClaims, name string) (string, error) {
	switch v := claims[name].(type) {
	case nil:
		return "", nil
	case string:
		if len(v) > maxClaimLen {
			return "", fmt.Errorf("claim %q longer than %d bytes", name, maxClaimLen)
		}
		return v, nil
	case float64:
		if v != math.Trunc(v) || v < 0 || v > 1<<53 {
			return "", fmt.Errorf("claim %q is not an id", name)
		}
		return strconv.FormatInt(int64(v), 10), nil
	}
	return "", fmt.Errorf("claim %q is not a string", name)
}

// allowedAlg are the asymmetric algorithms accepted. "none" and HMAC (a
// public key used as a shared secret) are never.
var allowedAlg = map[string]bool{
	"RS256": true, "RS384": true, "RS512": true,
	"PS256": true, "PS384": true, "PS512": true,
	"ES256": true, "ES384": true, "ES512": true,
}

// fits reports whether a JWKS key may verify a token signed with alg.
func (k publicKey) fits(alg string) bool {
	if k.alg != "" && k.alg != alg {
		return false
	}
	switch key := k.key.(type) {
	case *rsa.PublicKey:
		return alg[0] == 'R' || alg[0] == 'P'
	case *ecdsa.PublicKey:
		want := map[string]elliptic.Curve{"ES256": elliptic.P256(), "ES384": elliptic.P384(), "ES512": elliptic.P521()}[alg]
		return want != nil && key.Curve == want
	}
	return false
}
