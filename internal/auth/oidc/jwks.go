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
	// maxOrgIssuers bounds the cache of per-organization issuers
	// (CircleCI's); configured issuers are not counted and never evicted.
	maxOrgIssuers = 64
	// newOrgIssuersPerMinute bounds first fetches of per-organization
	// issuers not yet cached. Only issuers Config.Wanted accepts (an
	// organization some trust policy names) count, so tokens naming random
	// organizations neither use it up nor make kiln fetch anything.
	newOrgIssuersPerMinute = 10
)

// publicKey is one verification key of an issuer.
type publicKey struct {
	kid string
	alg string // "" when the JWKS does not restrict it
	key any    // *rsa.PublicKey or *ecdsa.PublicKey
}

// keyCache holds the keys of the configured issuers and of the
// per-organization issuers trust policies name.
//
// Locks: keyCache.mu guards orgs and newFetches; each issuerKeys.mu guards
// that issuer's keys and fetch state. Neither is held during a fetch: a
// fetch runs in its own goroutine (owned by the cache, bounded by
// fetchTimeout) and publishes its result under issuerKeys.mu, so
// verifications whose key is cached never wait for an issuer.
type keyCache struct {
	client     *http.Client
	now        func() time.Time
	minRefresh time.Duration
	refresh    time.Duration
	wanted     func(ctx context.Context, p Provider, iss string) (bool, error)

	// fixed are the configured issuers' entries, made once; read-only.
	fixed map[string]*issuerKeys

	mu         sync.Mutex
	orgs       map[string]*issuerKeys
	newFetches []time.Time // first fetches of org issuers, last minute
}

// issuerKeys is one issuer's cached key set.
type issuerKeys struct {
	mu        sync.Mutex
	keys      []publicKey
	fetched   time.Time  // last successful fetch
	attempted time.Time  // start of the last fetch, successful or not
	lastErr   error      // of the last finished fetch
	inflight  *fetchCall // the running fetch, nil when none

	used time.Time // for eviction; guarded by keyCache.mu
}

// fetchCall is one running fetch; done closes when its result is in the
// issuerKeys.
type fetchCall struct{ done chan struct{} }

func newKeyCache(client *http.Client, now func() time.Time, minRefresh, refresh time.Duration, fixed []string,
	wanted func(context.Context, Provider, string) (bool, error)) *keyCache {
	c := &keyCache{client: client, now: now, minRefresh: minRefresh, refresh: refresh, wanted: wanted,
		fixed: map[string]*issuerKeys{}, orgs: map[string]*issuerKeys{}}
	for _, iss := range fixed {
		c.fixed[iss] = &issuerKeys{}
	}
	return c
}

func unavailable(iss, format string, args ...any) error {
	return &verifyError{
		msg:    fmt.Sprintf("%s of %s: %s", ErrKeysUnavailable, quote(iss), fmt.Sprintf(format, args...)),
		reason: ErrKeysUnavailable,
		kind:   errdefs.ErrUnavailable,
	}
}

// entry returns the cache entry of iss. Configured issuers always have
// one. A per-organization issuer gets one only if Wanted says a trust
// policy could match it, within the budget of new issuers a minute; when
// the cache is full the entry used least recently (preferring one that
// never got keys) makes room.
func (c *keyCache) entry(ctx context.Context, p Provider, iss string) (*issuerKeys, error) {
	if ik, ok := c.fixed[iss]; ok {
		return ik, nil
	}
	c.mu.Lock()
	if ik, ok := c.orgs[iss]; ok {
		ik.used = c.now()
		c.mu.Unlock()
		return ik, nil
	}
	c.mu.Unlock()
	if c.wanted != nil {
		ok, err := c.wanted(ctx, p, iss)
		if err != nil {
			return nil, unavailable(iss, "cannot look up trust policies; try again shortly")
		}
		if !ok {
			return nil, unauth(ErrNoPolicy, "%s (an administrator adds one with 'kiln trust-policies add --%s ORG/PROJECT')", quote(iss), p)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	if ik, ok := c.orgs[iss]; ok { // made while Wanted ran
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
	if len(recent) >= newOrgIssuersPerMinute {
		return nil, unavailable(iss, "too many new issuers in the last minute; try again shortly")
	}
	if len(c.orgs) >= maxOrgIssuers {
		c.evictLocked()
	}
	ik := &issuerKeys{used: now}
	c.orgs[iss] = ik
	c.newFetches = append(c.newFetches, now)
	return ik, nil
}

// evictLocked drops one org issuer: one without keys if any, else the one
// used least recently. c.mu is held.
func (c *keyCache) evictLocked() {
	var victim string
	var victimEmpty bool
	for iss, ik := range c.orgs {
		ik.mu.Lock()
		empty := len(ik.keys) == 0
		ik.mu.Unlock()
		if victim == "" || (empty && !victimEmpty) || (empty == victimEmpty && ik.used.Before(c.orgs[victim].used)) {
			victim, victimEmpty = iss, empty
		}
	}
	delete(c.orgs, victim)
}

// get returns the keys of iss that kid names (every key when kid is
// empty).
//
// Fetches: when the cache has no key kid names (at most once per
// minRefresh), and when the keys are older than refresh, so a key the
// issuer removed stops verifying. A verification waits for a fetch only
// when it has no key to use, or when the issuer was not asked for longer
// than twice refresh (an idle server: its keys may be long stale);
// otherwise it uses the cached keys while the fetch runs. One fetch per
// issuer runs at a time; waiters share it.
func (c *keyCache) get(ctx context.Context, p Provider, iss, kid string) ([]publicKey, error) {
	ik, err := c.entry(ctx, p, iss)
	if err != nil {
		return nil, err
	}
	waited := false
	for {
		ik.mu.Lock()
		now := c.now()
		have := ik.match(kid)
		unchecked := ik.attempted.IsZero() || now.Sub(ik.attempted) >= 2*c.refresh
		mayFetch := ik.attempted.IsZero() || c.minRefresh < 0 || now.Sub(ik.attempted) >= c.minRefresh
		wantFetch := len(have) == 0 || now.Sub(ik.fetched) >= c.refresh
		if wantFetch && mayFetch && ik.inflight == nil && !waited {
			c.start(ik, iss, now)
		}
		call := ik.inflight
		if call == nil || waited || (len(have) > 0 && !unchecked) {
			lastErr := ik.lastErr
			ik.mu.Unlock()
			switch {
			case len(have) > 0:
				return have, nil
			case lastErr != nil:
				return nil, lastErr
			case kid == "":
				return nil, &verifyError{msg: ErrUnknownKey.Error() + ": the token names no key id", reason: ErrUnknownKey, kind: errdefs.ErrUnauthenticated}
			}
			return nil, unauth(ErrUnknownKey, "%s", quote(kid))
		}
		ik.mu.Unlock()
		select {
		case <-call.done:
			waited = true
		case <-ctx.Done():
			return nil, unavailable(iss, "the request ended while kiln fetched the issuer's keys")
		}
	}
}

// start runs a fetch of iss's keys; ik.mu is held.
func (c *keyCache) start(ik *issuerKeys, iss string, now time.Time) {
	call := &fetchCall{done: make(chan struct{})}
	ik.inflight, ik.attempted = call, now
	go func() {
		defer close(call.done)
		keys, err := c.fetch(iss)
		ik.mu.Lock()
		defer ik.mu.Unlock()
		ik.inflight = nil
		if err != nil {
			// Keep serving the keys we have: an issuer's brief outage
			// should not stop builds whose tokens we can still verify.
			ik.lastErr = err
			return
		}
		// The new set replaces the old: removed keys stop verifying.
		ik.keys, ik.fetched, ik.lastErr = keys, c.now(), nil
	}()
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
func (c *keyCache) fetch(iss string) ([]publicKey, error) {
	// No request's context: the fetch serves every request of the issuer
	// and outlives the one that started it.
	ctx, cancel := context.WithTimeout(context.Background(), fetchTimeout)
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
