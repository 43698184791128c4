package oidc_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/auth/oidc"
	"github.com/kiln-dev/kiln/internal/auth/oidc/oidctest"
	"github.com/kiln-dev/kiln/internal/errdefs"
)

// hostileIssuer serves a discovery document and a key set chosen by the
// test, signing with a real key the test holds.
func hostileIssuer(t *testing.T, k oidctest.Key, disc func(base string) any, jwks func(k oidctest.Key) any) string {
	t.Helper()
	var base string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var v any
		switch r.URL.Path {
		case "/.well-known/openid-configuration":
			v = disc(base)
		case "/jwks":
			v = jwks(k)
		case "/redirect":
			http.Redirect(w, r, base+"/jwks", http.StatusFound)
			return
		case "/slow":
			time.Sleep(800 * time.Millisecond)
			v = jwks(k)
		default:
			http.NotFound(w, r)
			return
		}
		if s, ok := v.(string); ok {
			w.Write([]byte(s))
			return
		}
		json.NewEncoder(w).Encode(v)
	}))
	t.Cleanup(srv.Close)
	base = srv.URL
	return base
}

func goodDisc(base string) any { return map[string]string{"issuer": base, "jwks_uri": base + "/jwks"} }
func goodJWKS(k oidctest.Key) any {
	return map[string]any{"keys": []any{oidctest.JWK(k)}}
}

func TestHostileIssuers(t *testing.T) {
	b64 := base64.RawURLEncoding.EncodeToString
	k := oidctest.NewIssuer(t).Key() // one key for every case
	for _, tc := range []struct {
		name string
		disc func(base string) any
		jwks func(k oidctest.Key) any
	}{
		{"discovery names another issuer", func(base string) any {
			return map[string]string{"issuer": "https://token.actions.githubusercontent.com", "jwks_uri": base + "/jwks"}
		}, goodJWKS},
		{"no jwks_uri", func(base string) any { return map[string]string{"issuer": base} }, goodJWKS},
		{"jwks_uri off loopback over http", func(base string) any {
			return map[string]string{"issuer": base, "jwks_uri": "http://169.254.169.254/latest/meta-data"}
		}, goodJWKS},
		{"jwks_uri redirects", func(base string) any { return map[string]string{"issuer": base, "jwks_uri": base + "/redirect"} }, goodJWKS},
		{"discovery not JSON", func(string) any { return "<html>" }, goodJWKS},
		{"huge discovery", func(base string) any {
			return map[string]string{"issuer": base, "jwks_uri": base + "/jwks", "pad": strings.Repeat("x", 100<<10)}
		}, goodJWKS},
		{"huge key set", goodDisc, func(k oidctest.Key) any {
			return map[string]any{"keys": []any{oidctest.JWK(k)}, "pad": strings.Repeat("x", 600<<10)}
		}},
		{"too many keys", goodDisc, func(k oidctest.Key) any {
			keys := []any{}
			for i := 0; i < 101; i++ {
				keys = append(keys, oidctest.JWK(k))
			}
			return map[string]any{"keys": keys}
		}},
		{"only a symmetric key", goodDisc, func(k oidctest.Key) any {
			return map[string]any{"keys": []any{map[string]string{"kty": "oct", "kid": k.ID, "k": b64([]byte("secret"))}}}
		}},
		{"only an encryption key", goodDisc, func(k oidctest.Key) any {
			j := oidctest.JWK(k)
			j["use"] = "enc"
			return map[string]any{"keys": []any{j}}
		}},
		{"RSA key too small", goodDisc, func(k oidctest.Key) any {
			j := oidctest.JWK(k)
			j["n"] = b64(make([]byte, 64))
			return map[string]any{"keys": []any{j}}
		}},
		{"EC point off the curve", goodDisc, func(k oidctest.Key) any {
			return map[string]any{"keys": []any{map[string]string{"kty": "EC", "kid": k.ID, "crv": "P-256",
				"x": b64(make([]byte, 32)), "y": b64(append(make([]byte, 31), 1))}}}
		}},
		{"key set not JSON", goodDisc, func(oidctest.Key) any { return "{]" }},
		{"slow key set", func(base string) any { return map[string]string{"issuer": base, "jwks_uri": base + "/slow"} }, goodJWKS},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base := hostileIssuer(t, k, tc.disc, tc.jwks)
			v, err := oidc.NewVerifier(oidc.Config{Audience: aud, GitHubIssuer: base,
				HTTPClient: &http.Client{Timeout: 500 * time.Millisecond,
					CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}})
			if err != nil {
				t.Fatal(err)
			}
			_, err = v.Verify(context.Background(), oidctest.Sign(t, k, oidctest.GitHubClaims(base, aud, "acme/app")))
			wantReason(t, tc.name, err, oidc.ErrKeysUnavailable, errdefs.ErrUnavailable)
			if err != nil && strings.Contains(err.Error(), "169.254") {
				t.Errorf("message leaks the jwks_uri target: %v", err)
			}
		})
	}
	// The same issuer with a sane key set works (the harness is not the
	// reason for the failures above).
	base := hostileIssuer(t, k, goodDisc, goodJWKS)
	v, _ := oidc.NewVerifier(oidc.Config{Audience: aud, GitHubIssuer: base})
	if _, err := v.Verify(context.Background(), oidctest.Sign(t, k, oidctest.GitHubClaims(base, aud, "acme/app"))); err != nil {
		t.Fatalf("sane issuer: %v", err)
	}
}

// Tokens naming ever new CircleCI organizations cannot make kiln fetch
// without bound.
func TestNewIssuerFetchesBounded(t *testing.T) {
	iss := oidctest.NewIssuer(t)
	v, err := oidc.NewVerifier(oidc.Config{Audience: aud, CircleCIIssuerPrefix: iss.URL + "/org/"})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	limited := 0
	for i := 0; i < 30; i++ {
		org := fmt.Sprintf("00000000-0000-0000-0000-%012d", i)
		tok := oidctest.Sign(t, iss.Key(), map[string]any{"iss": iss.URL + "/org/" + org, "aud": aud, "exp": now.Add(time.Minute).Unix(),
			"oidc.circleci.com/org-id": org, "oidc.circleci.com/project-id": "p"})
		if _, err := v.Verify(context.Background(), tok); errdefs.IsUnavailable(err) {
			limited++
		} else if err != nil {
			t.Fatalf("org %d: %v", i, err)
		}
	}
	if fetches := iss.JWKSFetches(); fetches > 10 || limited != 30-fetches {
		t.Errorf("30 new issuers: %d JWKS fetches, %d refused; want at most 10 fetches per minute", fetches, limited)
	}
}
