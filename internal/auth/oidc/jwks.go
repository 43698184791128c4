package oidc

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/kiln-dev/kiln/internal/errdefs"
)

// Bounds on what an issuer (or something pretending to be one) can make
// kiln hold or do.
const (
	maxDiscoveryBytes = 64 << 10
	maxJWKSBytes      = 512 << 10
	maxKeys           = 100
	fetchTimeout      = 10 * time.Second
	// maxIssuers bounds the cache: CircleCI has one issuer per organization.
	maxIssuers = 64
	// newIssuersPerMinute bounds first fetches of issuers not yet cached,
	// so tokens naming random CircleCI organizations cannot turn kiln into
	// a request generator.
	newIssuersPerMinute = 10
)

// publicKey is one verification key of an issuer.
type publicKey struct {
	kid string
	alg string // "" when the JWKS does not restrict it
	key any    // *rsa.PublicKey or *ecdsa.PublicKey
}

// keyCache holds the keys of every issuer seen.
type keyCache struct {
	client     *http.Client
	now        func() time.Time
	minRefresh time.Duration
	ttl        time.Duration

	mu         sync.Mutex // guards issuers and newFetches
	issuers    map[string]*issuerKeys
	newFetches []time.Time // when issuers were first added, last minute
}

// issuerKeys is one issuer's cached key set. mu is held during a fetch, so
// concurrent requests naming the same unknown key wait for one fetch.
type issuerKeys struct {
	mu        sync.Mutex
	keys      []publicKey
	fetched   time.Time // last successful fetch
	attempted time.Time // last fetch, successful or not
	lastErr   error     // of the last fetch
	used      time.Time // for eviction; guarded by keyCache.mu
}

func newKeyCache(client *http.Client, now func() time.Time, minRefresh, ttl time.Duration) *keyCache {
	return &keyCache{client: client, now: now, minRefresh: minRefresh, ttl: ttl, issuers: map[string]*issuerKeys{}}
}

func unavailable(iss, format string, args ...any) error {
	return &verifyError{
		msg:    fmt.Sprintf("%s of %s: %s", ErrKeysUnavailable, quote(iss), fmt.Sprintf(format, args...)),
		reason: ErrKeysUnavailable,
		kind:   errdefs.ErrUnavailable,
	}
}

// entry returns the cache entry of iss, making one if needed.
func (c *keyCache) entry(iss string) (*issuerKeys, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	if ik, ok := c.issuers[iss]; ok {
		ik.used = now
		return ik, nil
	}
	recent := c.newFetches[:0]
	for _, t := range c.newFetches {
		if now.Sub(t) < time.Minute {
			recent = append(recent, t)
		}
	}
	c.newFetches = recent
	if len(recent) >= newIssuersPerMinute {
		return nil, unavailable(iss, "too many new issuers in the last minute; try again shortly")
	}
	if len(c.issuers) >= maxIssuers {
		var oldest string
		for k, ik := range c.issuers {
			if oldest == "" || ik.used.Before(c.issuers[oldest].used) {
				oldest = k
			}
		}
		delete(c.issuers, oldest)
	}
	ik := &issuerKeys{used: now}
	c.issuers[iss] = ik
	c.newFetches = append(c.newFetches, now)
	return ik, nil
}

// get returns the keys of iss that kid names (every key when kid is
// empty), fetching the issuer's JWKS when the cache has none, is older
// than the TTL, or lacks kid — at most once per minRefresh.
func (c *keyCache) get(ctx context.Context, iss, kid string) ([]publicKey, error) {
	ik, err := c.entry(iss)
	if err != nil {
		return nil, err
	}
	ik.mu.Lock()
	defer ik.mu.Unlock()
	now := c.now()
	have := ik.match(kid)
	stale := ik.fetched.IsZero() || now.Sub(ik.fetched) >= c.ttl
	mayFetch := ik.attempted.IsZero() || c.minRefresh < 0 || now.Sub(ik.attempted) >= c.minRefresh
	if (len(have) == 0 || stale) && mayFetch {
		ik.attempted = now
		keys, err := c.fetch(ctx, iss)
		if err != nil {
			// Keep serving the keys we have: an issuer's brief outage
			// should not stop builds whose tokens we can still verify.
			ik.lastErr = err
		} else {
			ik.keys, ik.fetched, ik.lastErr = keys, now, nil
		}
		have = ik.match(kid)
	}
	switch {
	case len(have) > 0:
		return have, nil
	case ik.lastErr != nil:
		return nil, ik.lastErr
	case kid == "":
		return nil, &verifyError{msg: ErrUnknownKey.Error() + ": the token names no key id", reason: ErrUnknownKey, kind: errdefs.ErrUnauthenticated}
	}
	return nil, unauth(ErrUnknownKey, "%s", quote(kid))
}

func (ik *issuerKeys) match(kid string) []publicKey {
	if kid == "" {
		return ik.keys
	}
	for _, k := range ik.keys {
		if k.kid == kid {
			return []publicKey{k}
		}
	}
	return nil
}

// fetch reads the issuer's discovery document and then its JWKS.
func (c *keyCache) fetch(ctx context.Context, iss string) ([]publicKey, error) {
	// The fetch outlives a canceled request: other requests wait for it.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), fetchTimeout)
	defer cancel()
	var disc struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	discURL := strings.TrimSuffix(iss, "/") + "/.well-known/openid-configuration"
	if err := c.getJSON(ctx, discURL, maxDiscoveryBytes, &disc); err != nil {
		return nil, unavailable(iss, "discovery document: %v", err)
	}
	if disc.Issuer != iss {
		return nil, unavailable(iss, "discovery document names issuer %s", quote(disc.Issuer))
	}
	if err := checkJWKSURL(iss, disc.JWKSURI); err != nil {
		return nil, unavailable(iss, "%v", err)
	}
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := c.getJSON(ctx, disc.JWKSURI, maxJWKSBytes, &set); err != nil {
		return nil, unavailable(iss, "key set: %v", err)
	}
	if len(set.Keys) > maxKeys {
		return nil, unavailable(iss, "key set has %d keys (at most %d)", len(set.Keys), maxKeys)
	}
	var keys []publicKey
	for _, raw := range set.Keys {
		// Keys kiln cannot use (symmetric, encryption, unknown curves) are
		// skipped, not fatal: issuers may publish more than signing keys.
		if k, err := parseJWK(raw); err == nil {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return nil, unavailable(iss, "key set has no usable RSA or ECDSA signing key")
	}
	return keys, nil
}

// checkJWKSURL accepts https key-set URLs, and http on loopback when the
// issuer itself is a loopback http issuer (tests, development).
func checkJWKSURL(iss, s string) error {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || u.User != nil {
		return fmt.Errorf("discovery document has no usable jwks_uri")
	}
	if u.Scheme == "https" {
		return nil
	}
	if u.Scheme == "http" && isLoopback(u.Hostname()) && strings.HasPrefix(iss, "http://") {
		return nil
	}
	return fmt.Errorf("the discovery document's jwks_uri must use https")
}

func (c *keyCache) getJSON(ctx context.Context, u string, limit int64, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return fmt.Errorf("bad URL")
	}
	req.Header.Set("Accept", "application/json")
	res, err := c.client.Do(req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("timed out after %s", fetchTimeout)
		}
		// Not the raw error: it may describe kiln's own network.
		return fmt.Errorf("unreachable")
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("HTTP %d", res.StatusCode)
	}
	b, err := io.ReadAll(io.LimitReader(res.Body, limit+1))
	if err != nil {
		return fmt.Errorf("read failed")
	}
	if int64(len(b)) > limit {
		return fmt.Errorf("larger than %d bytes", limit)
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("not JSON")
	}
	return nil
}

// jwk is the subset of RFC 7517/7518 fields kiln reads.
type jwk struct {
	Kty string `json:"kty"`
	Kid string `json:"kid"`
	Use string `json:"use"`
	Alg string `json:"alg"`
	N   string `json:"n"`
	E   string `json:"e"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Y   string `json:"y"`
}

func b64(s string) ([]byte, error) {
	return base64.RawURLEncoding.DecodeString(strings.TrimRight(s, "="))
}

// parseJWK turns one JWKS entry into a verification key.
func parseJWK(raw json.RawMessage) (publicKey, error) {
	var j jwk
	if err := json.Unmarshal(raw, &j); err != nil {
		return publicKey{}, err
	}
	if j.Use != "" && j.Use != "sig" {
		return publicKey{}, fmt.Errorf("key use %q", j.Use)
	}
	if j.Alg != "" && !allowedAlg[j.Alg] {
		return publicKey{}, fmt.Errorf("key alg %q", j.Alg)
	}
	k := publicKey{kid: j.Kid, alg: j.Alg}
	switch j.Kty {
	case "RSA":
		n, err := b64(j.N)
		if err != nil {
			return publicKey{}, err
		}
		e, err := b64(j.E)
		if err != nil || len(e) == 0 || len(e) > 4 {
			return publicKey{}, fmt.Errorf("bad RSA exponent")
		}
		mod := new(big.Int).SetBytes(n)
		if bits := mod.BitLen(); bits < 2048 || bits > 8192 {
			return publicKey{}, fmt.Errorf("RSA key of %d bits", bits)
		}
		exp := int(new(big.Int).SetBytes(e).Int64())
		if exp < 3 || exp%2 == 0 {
			return publicKey{}, fmt.Errorf("bad RSA exponent")
		}
		k.key = &rsa.PublicKey{N: mod, E: exp}
	case "EC":
		curve := map[string]elliptic.Curve{"P-256": elliptic.P256(), "P-384": elliptic.P384(), "P-521": elliptic.P521()}[j.Crv]
		if curve == nil {
			return publicKey{}, fmt.Errorf("curve %q", j.Crv)
		}
		size := (curve.Params().BitSize + 7) / 8
		x, err1 := b64(j.X)
		y, err2 := b64(j.Y)
		if err1 != nil || err2 != nil || len(x) > size || len(y) > size {
			return publicKey{}, fmt.Errorf("bad EC point")
		}
		point := make([]byte, 1+2*size)
		point[0] = 4
		copy(point[1+size-len(x):1+size], x)
		copy(point[1+2*size-len(y):], y)
		// Rejects points not on the curve (invalid-curve attacks).
		pub, err := ecdsa.ParseUncompressedPublicKey(curve, point)
		if err != nil {
			return publicKey{}, err
		}
		k.key = pub
	default:
		return publicKey{}, fmt.Errorf("key type %q", j.Kty)
	}
	return k, nil
}
