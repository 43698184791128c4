package oidc_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/auth/oidc"
	"github.com/kiln-dev/kiln/internal/auth/oidc/oidctest"
	"github.com/kiln-dev/kiln/internal/errdefs"
)

func circleToken(t *testing.T, k oidctest.Key, prefix, org string) string {
	now := time.Now()
	return oidctest.Sign(t, k, map[string]any{"iss": prefix + org, "aud": aud, "iat": now.Unix(), "exp": now.Add(time.Minute).Unix(),
		"oidc.circleci.com/org-id": org, "oidc.circleci.com/project-id": "p"})
}

// Tokens naming made-up CircleCI organizations neither fetch anything nor
// take a place or a budget a configured issuer or a real organization
// needs.
func TestForgedOrganizationsCannotCrowdOut(t *testing.T) {
	gh := oidctest.NewIssuer(t)
	cc := oidctest.NewIssuer(t)
	prefix := cc.URL + "/org/"
	const real, later = "00000000-0000-0000-0000-00000000aaaa", "00000000-0000-0000-0000-00000000bbbb"
	var asked atomic.Int32
	policies := map[string]bool{real: true}
	v, _ := newVerifier(t, gh, func(c *oidc.Config) {
		c.CircleCIIssuerPrefix = prefix
		c.Wanted = func(_ context.Context, p oidc.Provider, iss string) (bool, error) {
			asked.Add(1)
			return p == oidc.CircleCI && policies[strings.TrimPrefix(iss, prefix)], nil
		}
	})
	ctx := context.Background()
	for i := range 200 {
		org := fmt.Sprintf("00000000-0000-0000-0000-%012d", i)
		_, err := v.Verify(ctx, circleToken(t, cc.Key(), prefix, org))
		wantReason(t, "made-up organization", err, oidc.ErrNoPolicy, errdefs.ErrUnauthenticated)
		if i == 0 && !strings.Contains(err.Error(), "kiln trust-policies add --circleci") {
			t.Errorf("the refusal does not say what to do: %v", err)
		}
	}
	if n := cc.JWKSFetches(); n != 0 {
		t.Errorf("made-up organizations caused %d fetches", n)
	}
	if _, err := v.Verify(ctx, oidctest.Sign(t, gh.Key(), ghClaims(gh))); err != nil {
		t.Errorf("GitHub after the flood: %v", err)
	}
	if _, err := v.Verify(ctx, circleToken(t, cc.Key(), prefix, real)); err != nil {
		t.Errorf("a real organization after the flood: %v", err)
	}
	policies[later] = true // an administrator adds a policy for a new organization
	if _, err := v.Verify(ctx, circleToken(t, cc.Key(), prefix, later)); err != nil {
		t.Errorf("a newly trusted organization after the flood: %v", err)
	}
	if asked.Load() != 202 {
		t.Errorf("Wanted asked %d times, want once per uncached organization (202)", asked.Load())
	}
	// Configured issuers are never asked about, evicted or budgeted: a
	// verifier that wants every organization, flooded past its cache and
	// budget, still verifies GitHub from its cache.
	all, _ := newVerifier(t, gh, func(c *oidc.Config) { c.CircleCIIssuerPrefix = prefix })
	if _, err := all.Verify(ctx, oidctest.Sign(t, gh.Key(), ghClaims(gh))); err != nil {
		t.Fatal(err)
	}
	before := gh.JWKSFetches()
	for i := range 100 {
		all.Verify(ctx, circleToken(t, cc.Key(), prefix, fmt.Sprintf("00000000-0000-0000-0001-%012d", i)))
	}
	if _, err := all.Verify(ctx, oidctest.Sign(t, gh.Key(), ghClaims(gh))); err != nil {
		t.Errorf("GitHub after 100 organizations: %v", err)
	}
	if n := gh.JWKSFetches() - before; n != 0 {
		t.Errorf("GitHub's keys were fetched again %d times: evicted", n)
	}
}

// gatedIssuer serves one key; its JWKS answers only when the test lets it.
type gatedIssuer struct {
	url     string
	key     oidctest.Key
	gate    chan struct{} // JWKS requests after the first wait for a send (or the close at cleanup)
	fetches atomic.Int32
}

func newGatedIssuer(t *testing.T) *gatedIssuer {
	g := &gatedIssuer{key: oidctest.NewIssuer(t).Key(), gate: make(chan struct{})}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/.well-known/openid-configuration":
			json.NewEncoder(w).Encode(goodDisc(g.url))
		case "/jwks":
			if g.fetches.Add(1) > 1 {
				select {
				case <-g.gate:
				case <-r.Context().Done():
					return
				}
			}
			json.NewEncoder(w).Encode(goodJWKS(g.key))
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(g.gate) })
	g.url = srv.URL
	return g
}

// A fetch of a slow issuer (a token naming an unknown key) does not hold
// up tokens of keys already cached: they verify while it runs.
func TestSlowFetchDoesNotBlockCachedKeys(t *testing.T) {
	g := newGatedIssuer(t)
	v, err := oidc.NewVerifier(oidc.Config{Audience: aud, GitHubIssuer: g.url, MinRefresh: -1})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	good := oidctest.Sign(t, g.key, oidctest.GitHubClaims(g.url, aud, "acme/app"))
	if _, err := v.Verify(ctx, good); err != nil { // first fetch: not gated
		t.Fatal(err)
	}
	stranger := g.key
	stranger.ID = "unknown"
	slow := make(chan error, 1)
	go func() {
		_, err := v.Verify(ctx, oidctest.Sign(t, stranger, oidctest.GitHubClaims(g.url, aud, "acme/app")))
		slow <- err
	}()
	for g.fetches.Load() < 2 { // the unknown key's fetch is running, held by the gate
		time.Sleep(time.Millisecond)
	}
	for range 10 {
		if _, err := v.Verify(ctx, good); err != nil {
			t.Fatalf("a cached key during another request's fetch: %v", err)
		}
	}
	select {
	case err := <-slow:
		t.Fatalf("the unknown key's request did not wait for the fetch: %v", err)
	default:
	}
	g.gate <- struct{}{}
	if err := <-slow; !errors.Is(err, errdefs.ErrUnauthenticated) {
		t.Errorf("unknown key after the fetch: %v", err)
	}
	// Many requests naming unknown keys at once share one fetch.
	for range 5 {
		go func() {
			v.Verify(ctx, oidctest.Sign(t, stranger, oidctest.GitHubClaims(g.url, aud, "acme/app")))
			slow <- nil
		}()
	}
	time.Sleep(50 * time.Millisecond)
	g.gate <- struct{}{}
	for range 5 {
		<-slow
	}
	if n := g.fetches.Load(); n > 4 {
		t.Errorf("%d fetches; concurrent unknown keys should share one", n)
	}
}

// A key the issuer removed stops verifying within the refresh interval,
// even on a server that saw no token for a long time.
func TestRemovedKeyStopsOnSchedule(t *testing.T) {
	iss := oidctest.NewIssuer(t)
	v, clk := newVerifier(t, iss)
	ctx := context.Background()
	old := iss.Key()
	claims := func() map[string]any {
		return ghClaims(iss, func(c map[string]any) {
			now := clk.Now()
			c["iat"], c["nbf"], c["exp"] = now.Unix(), now.Unix(), now.Add(time.Minute).Unix()
		})
	}
	if _, err := v.Verify(ctx, oidctest.Sign(t, old, claims())); err != nil {
		t.Fatal(err)
	}
	next := iss.NewKey(t, "RS256")
	iss.Publish(next)
	// Busy server: past the interval, one verification starts a fetch
	// and uses the cached keys; once the fetch is in, the old key fails.
	clk.Add(6 * time.Minute)
	v.Verify(ctx, oidctest.Sign(t, old, claims()))
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := v.Verify(ctx, oidctest.Sign(t, old, claims()))
		if errors.Is(err, errdefs.ErrUnauthenticated) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the removed key still verifies after a refresh: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Idle server: the first token after a long quiet waits for the fetch.
	iss.Publish(old)
	clk.Add(time.Hour)
	_, err := v.Verify(ctx, oidctest.Sign(t, next, claims()))
	wantReason(t, "removed key after an idle hour", err, oidc.ErrUnknownKey, errdefs.ErrUnauthenticated)
}

func TestLifetimeAndCrit(t *testing.T) {
	iss := oidctest.NewIssuer(t)
	v, _ := newVerifier(t, iss)
	ctx := context.Background()
	now := time.Now()
	for name, edit := range map[string]func(map[string]any){
		"exp 100 years ahead": func(c map[string]any) { c["exp"] = now.AddDate(100, 0, 0).Unix() },
		"exp 25 h after iat": func(c map[string]any) {
			c["iat"], c["exp"] = now.Add(-2*time.Hour).Unix(), now.Add(23*time.Hour).Unix()
		},
		"no iat, exp 25 h ahead": func(c map[string]any) { delete(c, "iat"); c["exp"] = now.Add(25 * time.Hour).Unix() },
		"iat in the past, exp ahead": func(c map[string]any) {
			c["iat"], c["exp"] = now.Add(-30*24*time.Hour).Unix(), now.Add(time.Hour).Unix()
		},
	} {
		_, err := v.Verify(ctx, oidctest.Sign(t, iss.Key(), ghClaims(iss, edit)))
		wantReason(t, name, err, oidc.ErrLifetime, errdefs.ErrUnauthenticated)
	}
	if _, err := v.Verify(ctx, oidctest.Sign(t, iss.Key(), ghClaims(iss, func(c map[string]any) { c["exp"] = now.Add(23 * time.Hour).Unix() }))); err != nil {
		t.Errorf("a 23 h token: %v", err)
	}
	for _, crit := range []any{[]string{"exp"}, []string{"b64"}, []string{}, "x"} {
		_, err := v.Verify(ctx, oidctest.SignWithHeader(t, iss.Key(), map[string]any{"crit": crit, "b64": false}, ghClaims(iss)))
		wantReason(t, fmt.Sprintf("crit %v", crit), err, oidc.ErrCritical, errdefs.ErrUnauthenticated)
	}
}
