// Package oidctest is a local OIDC issuer for tests: its own key pairs, a
// discovery document and a JWKS served on loopback, and helpers that mint
// tokens the way GitHub Actions and the other CI providers do. Unit tests
// and the end-to-end tests share it; nothing outside tests imports it.
package oidctest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Key is a signing key of the issuer.
type Key struct {
	ID      string
	Alg     string // RS256 or ES256
	Private crypto.Signer
}

// Issuer serves, for any path P under its URL,
// P/.well-known/openid-configuration (issuer URL+P) and P/jwks, so one
// server can also play CircleCI's per-organization issuers (URL/org/<id>).
type Issuer struct {
	URL    string
	Server *httptest.Server

	mu      sync.Mutex
	served  []Key
	fetches int
	n       int
	delay   time.Duration // before each JWKS answer (SetJWKSDelay)
}

// SetJWKSDelay makes the issuer answer JWKS requests d late (a slow or
// overloaded issuer); 0 restores prompt answers.
func (i *Issuer) SetJWKSDelay(d time.Duration) {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.delay = d
}

// NewIssuer starts an issuer that publishes one RS256 key (Key()).
func NewIssuer(t testing.TB) *Issuer {
	t.Helper()
	i := &Issuer{}
	i.Server = httptest.NewServer(http.HandlerFunc(i.serve))
	t.Cleanup(i.Server.Close)
	i.URL = i.Server.URL
	i.served = []Key{i.NewKey(t, "RS256")}
	return i
}

func (i *Issuer) serve(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	switch {
	case strings.HasSuffix(r.URL.Path, "/.well-known/openid-configuration"):
		base := i.URL + strings.TrimSuffix(r.URL.Path, "/.well-known/openid-configuration")
		json.NewEncoder(w).Encode(map[string]any{
			"issuer":                                base,
			"jwks_uri":                              base + "/jwks",
			"id_token_signing_alg_values_supported": []string{"RS256", "ES256"},
		})
	case strings.HasSuffix(r.URL.Path, "/jwks"):
		i.mu.Lock()
		delay := i.delay
		i.mu.Unlock()
		if delay > 0 {
			select {
			case <-time.After(delay):
			case <-r.Context().Done():
				return
			}
		}
		i.mu.Lock()
		i.fetches++
		keys := make([]map[string]string, 0, len(i.served))
		for _, k := range i.served {
			keys = append(keys, JWK(k))
		}
		i.mu.Unlock()
		json.NewEncoder(w).Encode(map[string]any{"keys": keys})
	default:
		http.NotFound(w, r)
	}
}

// NewKey generates a key ("RS256" or "ES256") that is not yet published.
func (i *Issuer) NewKey(t testing.TB, alg string) Key {
	t.Helper()
	i.mu.Lock()
	i.n++
	id := fmt.Sprintf("key-%d", i.n)
	i.mu.Unlock()
	var priv crypto.Signer
	var err error
	switch alg {
	case "RS256":
		priv, err = rsa.GenerateKey(rand.Reader, 2048)
	case "ES256":
		priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	default:
		t.Fatalf("oidctest: unsupported alg %q", alg)
	}
	if err != nil {
		t.Fatal(err)
	}
	return Key{ID: id, Alg: alg, Private: priv}
}

// Key returns the first published key.
func (i *Issuer) Key() Key {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.served[0]
}

// Publish replaces the published key set (key rotation: publish old and
// new, later only new).
func (i *Issuer) Publish(keys ...Key) {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.served = append([]Key(nil), keys...)
}

// JWKSFetches counts JWKS requests served.
func (i *Issuer) JWKSFetches() int {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.fetches
}

// JWK is k's public half as a JWKS entry.
func JWK(k Key) map[string]string {
	enc := base64.RawURLEncoding.EncodeToString
	switch pub := k.Private.Public().(type) {
	case *rsa.PublicKey:
		return map[string]string{"kty": "RSA", "kid": k.ID, "alg": k.Alg, "use": "sig",
			"n": enc(pub.N.Bytes()), "e": enc(big.NewInt(int64(pub.E)).Bytes())}
	case *ecdsa.PublicKey:
		b, _ := pub.Bytes() // 0x04 || X || Y
		size := (len(b) - 1) / 2
		return map[string]string{"kty": "EC", "kid": k.ID, "alg": k.Alg, "use": "sig", "crv": "P-256",
			"x": enc(b[1 : 1+size]), "y": enc(b[1+size:])}
	}
	panic("oidctest: unknown key type")
}

// Sign mints a token signed by k with kid = k.ID.
func Sign(t testing.TB, k Key, claims map[string]any) string {
	t.Helper()
	method := jwt.GetSigningMethod(k.Alg)
	tok := jwt.NewWithClaims(method, jwt.MapClaims(claims))
	tok.Header["kid"] = k.ID
	s, err := tok.SignedString(k.Private)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// SignWithHeader is Sign with extra header fields (they may override kid).
func SignWithHeader(t testing.TB, k Key, header, claims map[string]any) string {
	t.Helper()
	tok := jwt.NewWithClaims(jwt.GetSigningMethod(k.Alg), jwt.MapClaims(claims))
	tok.Header["kid"] = k.ID
	for name, v := range header {
		tok.Header[name] = v
	}
	s, err := tok.SignedString(k.Private)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Unsigned assembles header.claims.signature from raw parts, for tokens no
// honest library would produce (alg none, HMAC with a public key, …).
func Unsigned(header, claims map[string]any, sig []byte) string {
	enc := func(v any) string {
		b, _ := json.Marshal(v)
		return base64.RawURLEncoding.EncodeToString(b)
	}
	return enc(header) + "." + enc(claims) + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// GitHubClaims are the claims of a GitHub Actions job token of repository
// "owner/repo", issued now and valid for five minutes.
func GitHubClaims(iss, aud, repository string) map[string]any {
	owner, _, _ := strings.Cut(repository, "/")
	now := time.Now()
	return map[string]any{
		"iss":              iss,
		"aud":              aud,
		"sub":              "repo:" + repository + ":ref:refs/heads/main",
		"iat":              now.Unix(),
		"nbf":              now.Unix(),
		"exp":              now.Add(5 * time.Minute).Unix(),
		"jti":              fmt.Sprintf("%d", now.UnixNano()),
		"repository":       repository,
		"repository_owner": owner,
		"ref":              "refs/heads/main",
		"workflow":         "build",
	}
}
