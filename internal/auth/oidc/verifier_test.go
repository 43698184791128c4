package oidc_test

import (
	"context"
	"crypto/hmac"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/auth/oidc"
	"github.com/kiln-dev/kiln/internal/auth/oidc/oidctest"
	"github.com/kiln-dev/kiln/internal/errdefs"
)

const aud = "kiln-test"

// clock is a settable time source shared by the verifier and the claims.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newVerifier(t *testing.T, iss *oidctest.Issuer, mod ...func(*oidc.Config)) (*oidc.Verifier, *clock) {
	t.Helper()
	clk := &clock{t: time.Now()}
	cfg := oidc.Config{Audience: aud, GitHubIssuer: iss.URL, Now: clk.Now}
	for _, m := range mod {
		m(&cfg)
	}
	v, err := oidc.NewVerifier(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return v, clk
}

func ghClaims(iss *oidctest.Issuer, mod ...func(map[string]any)) map[string]any {
	c := oidctest.GitHubClaims(iss.URL, aud, "acme/app")
	for _, m := range mod {
		m(c)
	}
	return c
}

// wantReason checks that err carries reason and the errdefs kind.
func wantReason(t *testing.T, name string, err, reason, kind error) {
	t.Helper()
	if !errors.Is(err, reason) || !errors.Is(err, kind) {
		t.Errorf("%s: got %v; want %v (%v)", name, err, reason, kind)
	}
}

func TestVerifyValidTokens(t *testing.T) {
	iss := oidctest.NewIssuer(t)
	ec := iss.NewKey(t, "ES256")
	iss.Publish(iss.Key(), ec)
	v, _ := newVerifier(t, iss)
	ctx := context.Background()
	for _, k := range []oidctest.Key{iss.Key(), ec} {
		id, err := v.Verify(ctx, oidctest.Sign(t, k, ghClaims(iss)))
		if err != nil {
			t.Fatalf("%s token: %v", k.Alg, err)
		}
		if id.Provider != oidc.GitHub || id.Owner != "acme" || id.Repo != "acme/app" || id.Issuer != iss.URL ||
			id.Subject != "repo:acme/app:ref:refs/heads/main" || id.ExpiresAt.IsZero() {
			t.Errorf("%s identity = %+v", k.Alg, id)
		}
	}
	// aud may be a list; one entry matching is enough.
	if _, err := v.Verify(ctx, oidctest.Sign(t, iss.Key(), ghClaims(iss, func(c map[string]any) { c["aud"] = []string{"other", aud} }))); err != nil {
		t.Errorf("aud list: %v", err)
	}
	// Within the clock skew of a minute.
	now := time.Now()
	skewed := ghClaims(iss, func(c map[string]any) {
		c["exp"], c["nbf"], c["iat"] = now.Add(-30*time.Second).Unix(), now.Add(30*time.Second).Unix(), now.Add(30*time.Second).Unix()
	})
	if _, err := v.Verify(ctx, oidctest.Sign(t, iss.Key(), skewed)); err != nil {
		t.Errorf("within skew: %v", err)
	}
	if n := iss.JWKSFetches(); n != 1 {
		t.Errorf("JWKS fetched %d times for tokens of known keys, want 1 (cached)", n)
	}
}

func TestVerifyRejects(t *testing.T) {
	iss := oidctest.NewIssuer(t)
	rogue := oidctest.NewIssuer(t) // a real issuer, just not a configured one
	v, _ := newVerifier(t, iss)
	ctx := context.Background()
	now := time.Now()
	unpublished := iss.NewKey(t, "RS256")
	forged := unpublished
	forged.ID = iss.Key().ID // claims to be the published key

	// The HMAC confusion attack: HS256 with the issuer's public key as the
	// shared secret, naming the published RSA key.
	pubDER, _ := x509.MarshalPKIXPublicKey(iss.Key().Private.Public().(*rsa.PublicKey))
	hsHeader := map[string]any{"alg": "HS256", "typ": "JWT", "kid": iss.Key().ID}
	hsUnsigned := oidctest.Unsigned(hsHeader, ghClaims(iss), nil)
	signingInput := hsUnsigned[:strings.LastIndex(hsUnsigned, ".")]
	mac := hmac.New(sha256.New, pubDER)
	mac.Write([]byte(signingInput))
	hsToken := signingInput + "." + base64.RawURLEncoding.EncodeToString(mac.Sum(nil))

	valid := oidctest.Sign(t, iss.Key(), ghClaims(iss))
	parts := strings.Split(valid, ".")
	tamperedClaims := ghClaims(iss, func(c map[string]any) { c["repository"] = "acme/other" })
	tampered := strings.Split(oidctest.Unsigned(map[string]any{}, tamperedClaims, nil), ".")[1]

	for _, tc := range []struct {
		name   string
		token  string
		reason error
	}{
		{"wrong audience", oidctest.Sign(t, iss.Key(), ghClaims(iss, func(c map[string]any) { c["aud"] = "sts.amazonaws.com" })), oidc.ErrAudience},
		{"no audience", oidctest.Sign(t, iss.Key(), ghClaims(iss, func(c map[string]any) { delete(c, "aud") })), oidc.ErrClaims},
		{"wrong issuer", oidctest.Sign(t, rogue.Key(), ghClaims(rogue)), oidc.ErrUnknownIssuer},
		{"issuer with trailing slash", oidctest.Sign(t, iss.Key(), ghClaims(iss, func(c map[string]any) { c["iss"] = iss.URL + "/" })), oidc.ErrUnknownIssuer},
		{"no issuer", oidctest.Sign(t, iss.Key(), ghClaims(iss, func(c map[string]any) { delete(c, "iss") })), oidc.ErrClaims},
		{"expired", oidctest.Sign(t, iss.Key(), ghClaims(iss, func(c map[string]any) { c["exp"] = now.Add(-2 * time.Minute).Unix() })), oidc.ErrExpired},
		{"no expiry", oidctest.Sign(t, iss.Key(), ghClaims(iss, func(c map[string]any) { delete(c, "exp") })), oidc.ErrClaims},
		{"nbf in the future", oidctest.Sign(t, iss.Key(), ghClaims(iss, func(c map[string]any) { c["nbf"] = now.Add(2 * time.Minute).Unix() })), oidc.ErrNotYetValid},
		{"iat in the future", oidctest.Sign(t, iss.Key(), ghClaims(iss, func(c map[string]any) { c["iat"] = now.Add(2 * time.Minute).Unix() })), oidc.ErrIssuedInFuture},
		{"bad signature", oidctest.Sign(t, forged, ghClaims(iss)), oidc.ErrBadSignature},
		{"tampered claims", parts[0] + "." + tampered + "." + parts[2], oidc.ErrBadSignature},
		{"truncated signature", parts[0] + "." + parts[1] + "." + parts[2][:20], oidc.ErrBadSignature},
		{"unknown kid", oidctest.Sign(t, unpublished, ghClaims(iss)), oidc.ErrUnknownKey},
		// Keys named by the token itself (jwk, jku, x5u) are never used.
		{"embedded key and key URL", oidctest.SignWithHeader(t, unpublished, map[string]any{"kid": iss.Key().ID,
			"jwk": oidctest.JWK(unpublished), "jku": rogue.URL + "/jwks", "x5u": rogue.URL + "/jwks"}, ghClaims(iss)), oidc.ErrBadSignature},
		{"alg none", oidctest.Unsigned(map[string]any{"alg": "none", "kid": iss.Key().ID}, ghClaims(iss), []byte("x")), oidc.ErrAlgorithm},
		{"alg None", oidctest.Unsigned(map[string]any{"alg": "None", "kid": iss.Key().ID}, ghClaims(iss), []byte("x")), oidc.ErrAlgorithm},
		{"alg missing", oidctest.Unsigned(map[string]any{"kid": iss.Key().ID}, ghClaims(iss), []byte("x")), oidc.ErrAlgorithm},
		{"HMAC with the public key", hsToken, oidc.ErrAlgorithm},
		{"ES256 header naming an RSA key", oidctest.Unsigned(map[string]any{"alg": "ES256", "kid": iss.Key().ID}, ghClaims(iss), []byte(strings.Repeat("x", 64))), oidc.ErrUnknownKey},
		{"missing repository claim", oidctest.Sign(t, iss.Key(), ghClaims(iss, func(c map[string]any) { delete(c, "repository") })), oidc.ErrClaims},
		{"repository claim not a string", oidctest.Sign(t, iss.Key(), ghClaims(iss, func(c map[string]any) { c["repository"] = []string{"acme/app"} })), oidc.ErrClaims},
		{"exp not a number", oidctest.Sign(t, iss.Key(), ghClaims(iss, func(c map[string]any) { c["exp"] = "tomorrow" })), oidc.ErrMalformed},
	} {
		_, err := v.Verify(ctx, tc.token)
		wantReason(t, tc.name, err, tc.reason, errdefs.ErrUnauthenticated)
	}
	if n := rogue.JWKSFetches(); n != 0 {
		t.Errorf("an unconfigured issuer's keys were fetched %d times", n)
	}
	// Messages name the reason, so a CI user knows what to fix.
	_, err := v.Verify(ctx, oidctest.Sign(t, iss.Key(), ghClaims(iss, func(c map[string]any) { c["aud"] = "wrong" })))
	if !strings.Contains(err.Error(), `"wrong"`) || !strings.Contains(err.Error(), `"kiln-test"`) {
		t.Errorf("audience message = %q; want it to name both audiences", err)
	}
}

func TestVerifyMalformed(t *testing.T) {
	iss := oidctest.NewIssuer(t)
	v, _ := newVerifier(t, iss)
	valid := oidctest.Sign(t, iss.Key(), ghClaims(iss))
	parts := strings.Split(valid, ".")
	b64 := base64.RawURLEncoding.EncodeToString
	for name, tok := range map[string]string{
		"empty":            "",
		"garbage":          "not a token",
		"two parts":        "abc.def",
		"four parts":       valid + ".x",
		"empty part":       parts[0] + ".." + parts[2],
		"bad base64":       "!!!." + parts[1] + "." + parts[2],
		"header not JSON":  b64([]byte("{nope")) + "." + parts[1] + "." + parts[2],
		"claims not JSON":  parts[0] + "." + b64([]byte("[1,2")) + "." + parts[2],
		"claims an array":  parts[0] + "." + b64([]byte("[1,2]")) + "." + parts[2],
		"header an array":  b64([]byte(`["alg"]`)) + "." + parts[1] + "." + parts[2],
		"huge":             parts[0] + "." + strings.Repeat("A", oidc.MaxTokenBytes) + "." + parts[2],
		"unicode":          "é.é.é",
		"NUL":              parts[0] + "\x00." + parts[1] + "." + parts[2],
		"deeply nested":    parts[0] + "." + b64([]byte(strings.Repeat("[", 5000))) + "." + parts[2],
		"padded signature": valid + "==",
	} {
		_, err := v.Verify(context.Background(), tok)
		if !errors.Is(err, errdefs.ErrUnauthenticated) {
			t.Errorf("%s: %v; want ErrUnauthenticated", name, err)
		}
	}
	if n := iss.JWKSFetches(); n > 1 {
		t.Errorf("malformed tokens caused %d JWKS fetches", n)
	}
}

func TestJWKSRotation(t *testing.T) {
	iss := oidctest.NewIssuer(t)
	v, clk := newVerifier(t, iss)
	ctx := context.Background()
	old := iss.Key()
	if _, err := v.Verify(ctx, oidctest.Sign(t, old, ghClaims(iss))); err != nil {
		t.Fatal(err)
	}
	// The issuer rotates: the new key replaces the old one.
	next := iss.NewKey(t, "ES256")
	iss.Publish(next)
	clk.Add(11 * time.Second)
	if _, err := v.Verify(ctx, oidctest.Sign(t, next, ghClaims(iss))); err != nil {
		t.Fatalf("token of the rotated-in key: %v", err)
	}
	if n := iss.JWKSFetches(); n != 2 {
		t.Errorf("JWKS fetches = %d, want 2 (the unknown kid refetched)", n)
	}
	// The refetched set no longer has the old key.
	_, err := v.Verify(ctx, oidctest.Sign(t, old, ghClaims(iss)))
	wantReason(t, "old key after rotation", err, oidc.ErrUnknownKey, errdefs.ErrUnauthenticated)

	// Unknown key ids refetch at most once per 10 s.
	stranger := iss.NewKey(t, "RS256")
	before := iss.JWKSFetches()
	for range 5 {
		_, err := v.Verify(ctx, oidctest.Sign(t, stranger, ghClaims(iss)))
		wantReason(t, "unknown kid", err, oidc.ErrUnknownKey, errdefs.ErrUnauthenticated)
	}
	if n := iss.JWKSFetches() - before; n != 0 {
		t.Errorf("unknown kids within 10 s of a fetch caused %d fetches, want 0", n)
	}
	iss.Publish(next, stranger)
	clk.Add(11 * time.Second)
	if _, err := v.Verify(ctx, oidctest.Sign(t, stranger, ghClaims(iss))); err != nil {
		t.Errorf("after the rate limit passed: %v", err)
	}

	// Keys are refetched when older than the cache TTL even if known.
	before = iss.JWKSFetches()
	clk.Add(2 * time.Hour)
	if _, err := v.Verify(ctx, oidctest.Sign(t, next, ghClaims(iss, func(c map[string]any) {
		now := clk.Now()
		c["iat"], c["nbf"], c["exp"] = now.Unix(), now.Unix(), now.Add(time.Minute).Unix()
	}))); err != nil {
		t.Fatal(err)
	}
	if n := iss.JWKSFetches() - before; n != 1 {
		t.Errorf("fetches after the TTL = %d, want 1", n)
	}
}

// Many requests naming a new key at once cause one fetch.
func TestJWKSConcurrentUnknownKid(t *testing.T) {
	iss := oidctest.NewIssuer(t)
	v, _ := newVerifier(t, iss)
	tok := oidctest.Sign(t, iss.Key(), ghClaims(iss))
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := v.Verify(context.Background(), tok); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if n := iss.JWKSFetches(); n != 1 {
		t.Errorf("20 concurrent first requests caused %d fetches, want 1", n)
	}
}

func TestProviders(t *testing.T) {
	iss := oidctest.NewIssuer(t)
	ctx := context.Background()
	now := time.Now()
	base := func(issuer string) map[string]any {
		return map[string]any{"iss": issuer, "aud": aud, "sub": "job", "iat": now.Unix(), "exp": now.Add(time.Minute).Unix()}
	}
	with := func(c map[string]any, kv ...string) map[string]any {
		for i := 0; i < len(kv); i += 2 {
			c[kv[i]] = kv[i+1]
		}
		return c
	}

	gl, _ := newVerifier(t, iss, func(c *oidc.Config) { c.GitHubIssuer, c.GitLabIssuer = "", iss.URL })
	id, err := gl.Verify(ctx, oidctest.Sign(t, iss.Key(), with(base(iss.URL), "namespace_path", "group/sub", "project_path", "group/sub/app")))
	if err != nil || id.Provider != oidc.GitLab || id.Owner != "group/sub" || id.Repo != "group/sub/app" || id.String() != "GitLab project group/sub/app" {
		t.Errorf("gitlab: %+v, %v", id, err)
	}

	bk, _ := newVerifier(t, iss, func(c *oidc.Config) { c.GitHubIssuer, c.BuildkiteIssuer = "", iss.URL })
	id, err = bk.Verify(ctx, oidctest.Sign(t, iss.Key(), with(base(iss.URL), "organization_slug", "acme", "pipeline_slug", "deploy")))
	if err != nil || id.Provider != oidc.Buildkite || id.Owner != "acme" || id.Repo != "deploy" {
		t.Errorf("buildkite: %+v, %v", id, err)
	}

	// CircleCI: one issuer per organization under a prefix.
	const org, proj = "6b1f3a4e-1111-4c2d-9e8f-000000000001", "0c2d3e4f-2222-4a5b-8c9d-000000000002"
	cc, _ := newVerifier(t, iss, func(c *oidc.Config) { c.GitHubIssuer, c.CircleCIIssuerPrefix = "", iss.URL+"/org/" })
	ccClaims := func(issOrg, claimOrg string) map[string]any {
		return with(base(iss.URL+"/org/"+issOrg), "oidc.circleci.com/org-id", claimOrg, "oidc.circleci.com/project-id", proj)
	}
	id, err = cc.Verify(ctx, oidctest.Sign(t, iss.Key(), ccClaims(org, org)))
	if err != nil || id.Provider != oidc.CircleCI || id.Owner != org || id.Repo != proj || id.Issuer != iss.URL+"/org/"+org {
		t.Errorf("circleci: %+v, %v", id, err)
	}
	const other = "6b1f3a4e-1111-4c2d-9e8f-000000000009"
	_, err = cc.Verify(ctx, oidctest.Sign(t, iss.Key(), ccClaims(org, other)))
	wantReason(t, "circleci org-id differs from the issuer's", err, oidc.ErrClaims, errdefs.ErrUnauthenticated)
	for _, bad := range []string{"", "../../evil", org + "/x", org + "?q", strings.Repeat("a", 65)} {
		_, err = cc.Verify(ctx, oidctest.Sign(t, iss.Key(), ccClaims(bad, bad)))
		wantReason(t, "circleci issuer suffix "+bad, err, oidc.ErrUnknownIssuer, errdefs.ErrUnauthenticated)
	}
	// A GitHub token is not a CircleCI token: its issuer is not configured.
	_, err = cc.Verify(ctx, oidctest.Sign(t, iss.Key(), ghClaims(iss)))
	wantReason(t, "github token on a circleci-only verifier", err, oidc.ErrUnknownIssuer, errdefs.ErrUnauthenticated)
}

func TestNewVerifierConfig(t *testing.T) {
	for name, cfg := range map[string]oidc.Config{
		"plain http off loopback": {Audience: "kiln", GitHubIssuer: "http://ghe.example.com/_services/token"},
		"no audience":             {GitHubIssuer: oidc.DefaultGitHubIssuer},
		"same issuer twice":       {Audience: "kiln", GitHubIssuer: "https://x.example", GitLabIssuer: "https://x.example"},
		"prefix without slash":    {Audience: "kiln", CircleCIIssuerPrefix: "https://oidc.circleci.com/org"},
		"not a URL":               {Audience: "kiln", GitLabIssuer: "gitlab.example.com"},
		"query":                   {Audience: "kiln", GitLabIssuer: "https://gitlab.example.com/?a=b"},
	} {
		if _, err := oidc.NewVerifier(cfg); !errdefs.IsInvalid(err) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
	if _, err := oidc.NewVerifier(oidc.DefaultConfig()); err != nil {
		t.Errorf("default config: %v", err)
	}
	// Nothing configured: every token is from an unknown issuer.
	v, err := oidc.NewVerifier(oidc.Config{})
	if err != nil {
		t.Fatal(err)
	}
	iss := oidctest.NewIssuer(t)
	_, err = v.Verify(context.Background(), oidctest.Sign(t, iss.Key(), ghClaims(iss)))
	wantReason(t, "no issuers", err, oidc.ErrUnknownIssuer, errdefs.ErrUnauthenticated)
}
