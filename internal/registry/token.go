package registry

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/kiln-dev/kiln/internal/atomicfile"
	"github.com/kiln-dev/kiln/internal/auth"
)

const (
	// tokenIssuer marks the registry tokens this registry issues (and tells
	// them apart from CI providers' OIDC JWTs presented as bearer tokens).
	tokenIssuer = "kiln-registry"
	// service is the token flow's service name (the challenge's service=,
	// the token's audience).
	service = "kiln"
	// tokenTTL: registry tokens are short-lived; clients fetch new ones
	// when they expire. Revoking the kiln token behind one ends it at once.
	tokenTTL = 5 * time.Minute
	// maxScopes bounds the scopes one token request may ask for.
	maxScopes = 32
)

// tokenSigner issues and verifies registry tokens (ES256 JWTs).
type tokenSigner struct {
	key *ecdsa.PrivateKey
	kid string
}

// loadOrCreateKey reads the ES256 signing key at path, creating it (mode
// 0600) on first start. Tokens signed before a key change fail
// verification and clients simply fetch new ones.
func loadOrCreateKey(path string) (*tokenSigner, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		if b, err = newTokenKey(); err != nil {
			return nil, err
		}
		if err := writeFileAtomic(path, b); err != nil {
			return nil, fmt.Errorf("registry token key: %w", err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("registry token key: %w", err)
	}
	s, err := parseTokenKey(b)
	if err != nil {
		return nil, fmt.Errorf("registry token key %s: %w", path, err)
	}
	return s, nil
}

// sharedKey is the token key in the store every replica shares, so a
// token one replica issued verifies on any other: the first replica's
// key file if it has one (a single install moved to replicas), else a new
// key.
func sharedKey(ctx context.Context, secret SecretFunc, path string) (*tokenSigner, error) {
	b, err := secret(ctx, "registry/token-key", func() ([]byte, error) {
		b, err := os.ReadFile(path)
		if errors.Is(err, os.ErrNotExist) {
			return newTokenKey()
		}
		if err != nil {
			return nil, err
		}
		if _, err := parseTokenKey(b); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		return b, nil
	})
	if err != nil {
		return nil, fmt.Errorf("registry token key: %w", err)
	}
	s, err := parseTokenKey(b)
	if err != nil {
		return nil, fmt.Errorf("the shared registry token key: %w", err)
	}
	return s, nil
}

// newTokenKey makes an ES256 key, as PKCS #8 PEM.
func newTokenKey() ([]byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// parseTokenKey reads a PKCS #8 PEM ECDSA P-256 key.
func parseTokenKey(b []byte) (*tokenSigner, error) {
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, errors.New("not PEM")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, err
	}
	key, ok := k.(*ecdsa.PrivateKey)
	if !ok || key.Curve != elliptic.P256() {
		return nil, errors.New("want an ECDSA P-256 key")
	}
	pub, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	sum := sha256.Sum256(pub)
	return &tokenSigner{key: key, kid: hex.EncodeToString(sum[:8])}, nil
}

// writeFileAtomic writes a 0600 file (atomicfile.Write), making its
// directory first.
func writeFileAtomic(path string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return atomicfile.Write(path, b, 0o600)
}

// accessEntry is one granted scope in a token, as in Docker's token spec.
type accessEntry struct {
	Type    string   `json:"type"`
	Name    string   `json:"name"`
	Actions []string `json:"actions"`
}

// principalClaim carries the caller in the token, so a request with it is
// authorized against the caller's current rights too (and the stored
// token behind it is re-checked).
type principalClaim struct {
	Kind      auth.TokenKind `json:"kind"`
	OrgID     string         `json:"org"`
	ProjectID string         `json:"project,omitempty"`
	BuildID   string         `json:"build,omitempty"`
	TokenID   string         `json:"tid"`
	Projects  []string       `json:"projects,omitempty"`
	// Wide are the projects where a CI job has a project token's rights
	// (auth.Principal.WideProjectIDs); elsewhere it has the default role.
	Wide []string `json:"wide,omitempty"`
	// Policies and Until bound a CI job's registry token (auth/life.go):
	// refused once the job's token expired (no leeway) or one of the
	// policies is removed (stillValid).
	Policies []string `json:"policies,omitempty"`
	Until    int64    `json:"until,omitempty"` // unix seconds; 0: none
}

type tokenClaims struct {
	jwt.RegisteredClaims
	Access []accessEntry   `json:"access"`
	Kiln   *principalClaim `json:"kiln"`
}

// issue signs a registry token for p with the given access.
func (s *tokenSigner) issue(p auth.Principal, access []accessEntry, now time.Time) (string, error) {
	if access == nil {
		access = []accessEntry{}
	}
	claims := tokenClaims{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer:    tokenIssuer,
			Subject:   p.TokenID,
			Audience:  jwt.ClaimStrings{service},
			IssuedAt:  jwt.NewNumericDate(now),
			NotBefore: jwt.NewNumericDate(now.Add(-time.Minute)),
			ExpiresAt: jwt.NewNumericDate(p.Until(now.Add(tokenTTL))),
			ID:        auth.RandomString(16),
		},
		Access: access,
		Kiln: &principalClaim{Kind: p.Kind, OrgID: p.OrgID, ProjectID: p.ProjectID, BuildID: p.BuildID,
			TokenID: p.TokenID, Projects: p.ProjectIDs, Wide: p.WideProjectIDs, Policies: p.PolicyIDs},
	}
	if p.Bounded() && !p.ExpiresAt.IsZero() {
		claims.Kiln.Until = p.ExpiresAt.Unix()
	}
	t := jwt.NewWithClaims(jwt.SigningMethodES256, claims)
	t.Header["kid"] = s.kid
	return t.SignedString(s.key)
}

// issued reports whether raw looks like a token of this registry (its
// unverified issuer); verify decides whether it is one.
func (s *tokenSigner) issued(raw string) bool {
	if strings.Count(raw, ".") != 2 || len(raw) > 16<<10 {
		return false
	}
	var c jwt.RegisteredClaims
	_, _, err := jwt.NewParser().ParseUnverified(raw, &c)
	return err == nil && c.Issuer == tokenIssuer
}

// verify checks a registry token's signature (ES256 with this registry's
// key only), issuer, audience and times, and returns its caller.
func (s *tokenSigner) verify(raw string, now time.Time) (caller, error) {
	var c tokenClaims
	_, err := jwt.ParseWithClaims(raw, &c, func(*jwt.Token) (any, error) { return &s.key.PublicKey, nil },
		jwt.WithValidMethods([]string{jwt.SigningMethodES256.Alg()}),
		jwt.WithIssuer(tokenIssuer), jwt.WithAudience(service),
		jwt.WithExpirationRequired(), jwt.WithIssuedAt(), jwt.WithTimeFunc(func() time.Time { return now }),
		jwt.WithLeeway(30*time.Second))
	if err != nil {
		return caller{}, err
	}
	if c.Kiln == nil || c.Kiln.Kind == "" || c.Kiln.OrgID == "" {
		return caller{}, errors.New("registry token without a principal")
	}
	grants := map[string]action{}
	for _, a := range c.Access {
		key := a.Name
		if a.Type == "registry" {
			key = "registry:" + a.Name
		} else if a.Type != "repository" {
			continue
		}
		grants[key] |= parseActions(strings.Join(a.Actions, ","))
	}
	p := auth.Principal{TokenID: c.Kiln.TokenID, Kind: c.Kiln.Kind, OrgID: c.Kiln.OrgID,
		ProjectID: c.Kiln.ProjectID, BuildID: c.Kiln.BuildID, ProjectIDs: c.Kiln.Projects,
		WideProjectIDs: c.Kiln.Wide, PolicyIDs: c.Kiln.Policies}
	if c.Kiln.Until != 0 {
		p.ExpiresAt = time.Unix(c.Kiln.Until, 0)
	}
	return caller{p: p, grants: grants}, nil
}

// scope is one parsed "type:name:actions" of a token request.
type scope struct {
	typ, name string
	actions   action
}

// parseScopes reads token-request scopes; each value may hold several,
// space-separated (as the OAuth2 form sends them). Malformed ones are
// skipped: a token server grants what it can.
func parseScopes(values []string) ([]scope, error) {
	var out []scope
	for _, v := range values {
		for _, f := range strings.Fields(v) {
			if len(out) == maxScopes {
				return nil, fmt.Errorf("more than %d scopes", maxScopes)
			}
			typ, rest, ok := strings.Cut(f, ":")
			i := strings.LastIndex(rest, ":")
			if !ok || i < 0 {
				continue
			}
			name, acts := rest[:i], rest[i+1:]
			// "repository(plugin)" and other resource classes are repositories.
			if t, _, ok := strings.Cut(typ, "("); ok {
				typ = t
			}
			out = append(out, scope{typ: typ, name: name, actions: parseActions(acts)})
		}
	}
	return out, nil
}

// serveToken is the token endpoint (GET, or the OAuth2 POST form with
// grant_type=password): it exchanges a kiln token for a registry token
// granting, of the scopes asked, what the token's principal may do.
// Scopes on repositories the caller may not reach are granted nothing,
// silently, like any token server: the registry then refuses the request.
func (r *Registry) serveToken(w http.ResponseWriter, req *http.Request) {
	var secret string
	var scopeValues []string
	switch req.Method {
	case http.MethodGet:
		q := req.URL.Query()
		scopeValues = q["scope"]
		if _, pass, ok := req.BasicAuth(); ok {
			secret = pass
		} else if scheme, val, _ := strings.Cut(req.Header.Get("Authorization"), " "); strings.EqualFold(scheme, "bearer") && !r.tokens.issued(val) {
			secret = strings.TrimSpace(val)
		}
	case http.MethodPost:
		req.Body = http.MaxBytesReader(w, req.Body, 64<<10)
		if err := req.ParseForm(); err != nil {
			newOCIError(http.StatusBadRequest, "UNSUPPORTED", "token request: malformed form").write(w)
			return
		}
		if gt := req.PostForm.Get("grant_type"); gt != "password" {
			// No refresh tokens are issued; clients fall back to GET with
			// Basic auth on a 400.
			writeOAuthError(w, http.StatusBadRequest, "unsupported_grant_type", "only grant_type=password is supported")
			return
		}
		secret = req.PostForm.Get("password")
		scopeValues = req.PostForm["scope"]
	default:
		w.Header().Set("Allow", "GET, POST")
		newOCIError(http.StatusMethodNotAllowed, "UNSUPPORTED", "the token endpoint answers GET and POST").write(w)
		return
	}
	if secret == "" {
		w.Header().Set("WWW-Authenticate", `Basic realm="kiln"`)
		newOCIError(http.StatusUnauthorized, "UNAUTHORIZED", "authentication required: use a kiln token as the password (user x-token)").write(w)
		return
	}
	ctx := req.Context()
	p, err := r.cfg.Authn.Authenticate(ctx, secret)
	if err != nil {
		if r.badCredentials(err) {
			r.auditDenied(ctx, req, caller{}, route{kind: routeToken}, "invalid or expired token")
			w.Header().Set("WWW-Authenticate", `Basic realm="kiln"`)
			newOCIError(http.StatusUnauthorized, "UNAUTHORIZED", "invalid or expired token").write(w)
			return
		}
		r.internalError(ctx, w, "authenticate token request", err)
		return
	}
	if p.Expired(r.cfg.Now()) {
		// A CI job's token inside the verifier's clock skew: it obtains
		// nothing that would outlive it (auth/life.go).
		r.auditDenied(ctx, req, caller{p: p}, route{kind: routeToken}, "the CI job's token has expired")
		w.Header().Set("WWW-Authenticate", `Basic realm="kiln"`)
		newOCIError(http.StatusUnauthorized, "UNAUTHORIZED", "the CI job's token has expired; get a fresh one").write(w)
		return
	}
	scopes, err := parseScopes(scopeValues)
	if err != nil {
		newOCIError(http.StatusBadRequest, "UNSUPPORTED", "token request: "+err.Error()).write(w)
		return
	}
	c := caller{p: p}
	cache := rightsCache{}
	var access []accessEntry
	for _, sc := range scopes {
		switch sc.typ {
		case "repository":
			if !validRepository(sc.name) {
				continue
			}
			have, err := r.rights(ctx, c, projectOf(sc.name), cache)
			if err != nil {
				r.internalError(ctx, w, "token request", err)
				return
			}
			if g := have & sc.actions; g != 0 {
				access = append(access, accessEntry{Type: "repository", Name: sc.name, Actions: g.Names()})
			}
		case "registry":
			if sc.name == "catalog" {
				access = append(access, accessEntry{Type: "registry", Name: "catalog", Actions: []string{"*"}})
			}
		}
	}
	now := r.cfg.Now()
	tok, err := r.tokens.issue(p, access, now)
	if err != nil {
		r.internalError(ctx, w, "sign registry token", err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	json.NewEncoder(w).Encode(map[string]any{
		"token":        tok,
		"access_token": tok,
		"expires_in":   int(p.Until(now.Add(tokenTTL)).Sub(now) / time.Second),
		"issued_at":    now.UTC().Format(time.RFC3339),
	})
}

func writeOAuthError(w http.ResponseWriter, status int, code, desc string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]string{"error": code, "error_description": desc})
}
