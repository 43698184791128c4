package registry

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/errdefs"
)

// action is what a registry request needs or a token scope names: the
// registry's column of auth's table (pull, push, delete).
type action = auth.Action

const (
	actPull   = auth.Pull
	actPush   = auth.Push
	actDelete = auth.Delete

	actAll = actPull | actPush | actDelete
)

// parseActions reads a scope's action list ("pull,push", "*"); unknown
// actions are ignored, as token servers do.
func parseActions(s string) action {
	var a action
	for _, f := range strings.Split(s, ",") {
		switch strings.TrimSpace(f) {
		case "pull":
			a |= actPull
		case "push":
			a |= actPush
		case "delete":
			a |= actDelete
		case "*":
			a |= actAll
		}
	}
	return a
}

// caller is who made a registry request.
type caller struct {
	anonymous bool
	p         auth.Principal
	// grants is set when the caller presented a registry token (JWT): its
	// access caps what the caller may do with it, even where the principal
	// could do more (the client then asks the token endpoint for more).
	grants map[string]action
}

// scopeCatalog keys the catalog in grants.
const scopeCatalog = "registry:catalog"

// Authenticator resolves a kiln token (or a CI job's OIDC token) to a
// principal; *auth.Authenticator is one.
type Authenticator interface {
	Authenticate(ctx context.Context, secret string) (auth.Principal, error)
}

// errBadCredentials: the request carried credentials that are not valid.
var errBadCredentials = errors.New("invalid or expired credentials")

// authenticate reads the request's credentials: none (anonymous), Basic
// (any username, the password a kiln token), or Bearer (a registry token
// this registry issued, or a kiln token). Invalid credentials are
// errBadCredentials; anything else is a server error.
func (r *Registry) authenticate(req *http.Request) (caller, error) {
	h := req.Header.Get("Authorization")
	if h == "" {
		return caller{anonymous: true}, nil
	}
	scheme, val, _ := strings.Cut(h, " ")
	val = strings.TrimSpace(val)
	var secret string
	switch strings.ToLower(scheme) {
	case "basic":
		_, pass, ok := req.BasicAuth()
		if !ok || pass == "" {
			return caller{}, errBadCredentials
		}
		secret = pass
	case "bearer":
		if r.tokens.issued(val) {
			c, err := r.tokens.verify(val, r.cfg.Now())
			if err != nil {
				return caller{}, errBadCredentials
			}
			if err := r.stillValid(req.Context(), c.p); err != nil {
				return caller{}, err
			}
			return c, nil
		}
		secret = val
	default:
		return caller{}, errBadCredentials
	}
	p, err := r.cfg.Authn.Authenticate(req.Context(), secret)
	if err != nil {
		if isAuthRefusal(err) {
			return caller{}, errBadCredentials
		}
		return caller{}, err
	}
	return caller{p: p}, nil
}

// stillValid re-checks the stored token behind a registry token, so that
// deleting or expiring a kiln token ends its registry tokens at once (they
// live minutes, but nothing should outlive a revocation). OIDC principals
// are not stored: theirs end when the CI job's token expires or a trust
// policy that admitted the job is removed (auth/life.go).
func (r *Registry) stillValid(ctx context.Context, p auth.Principal) error {
	if p.Expired(r.cfg.Now()) {
		return errBadCredentials
	}
	if p.Kind == auth.TokenOIDC {
		ok, err := r.cfg.Store.TrustPoliciesExist(ctx, p.PolicyIDs)
		if err != nil {
			return fmt.Errorf("look up trust policies: %w", err)
		}
		if !ok || !p.Bounded() {
			return errBadCredentials
		}
		return nil
	}
	t, err := r.cfg.Store.GetToken(ctx, p.TokenID)
	if errdefs.IsNotFound(err) {
		return errBadCredentials
	}
	if err != nil {
		return fmt.Errorf("look up token: %w", err)
	}
	if t.Kind != p.Kind || t.OrgID != p.OrgID || (!t.ExpiresAt.IsZero() && r.cfg.Now().After(t.ExpiresAt)) {
		return errBadCredentials
	}
	return nil
}

// rightsCache memoizes project lookups within one request.
type rightsCache map[string]action

// rights is what c may do in the repositories of project id: its pull,
// push and delete rights in auth's table (0 for a project that does not
// exist: the same as one the caller may not see).
func (r *Registry) rights(ctx context.Context, c caller, id string, cache rightsCache) (action, error) {
	if c.anonymous {
		return 0, nil
	}
	if a, ok := cache[id]; ok {
		return a, nil
	}
	proj, err := r.cfg.Store.GetProject(ctx, id)
	if errdefs.IsNotFound(err) {
		cache[id] = 0
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("look up project: %w", err)
	}
	a := auth.RightsIn(c.p, proj) & actAll
	cache[id] = a
	return a, nil
}

// projectOf is a repository's first path segment.
func projectOf(repo string) string {
	p, _, _ := strings.Cut(repo, "/")
	return p
}

// isAuthRefusal reports the authenticator refusing a token (unknown,
// expired, or a CI job's token no trust policy matches), as opposed to
// failing to check it.
func isAuthRefusal(err error) bool {
	return errors.Is(err, errdefs.ErrUnauthenticated) || errors.Is(err, errdefs.ErrPermission)
}
