// Package auth defines who a caller is (a Principal), how tokens are minted
// and checked, and what each kind of token may reach. It owns the Token and
// TrustPolicy records; it reads them through the small Store interface
// below (internal/store implements it) and depends on nothing
// transport-specific: the Connect interceptor that reads the Authorization
// header lives in internal/server.
package auth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"math/big"
	"strings"
	"time"

	"github.com/kiln-dev/kiln/internal/errdefs"
)

// Token prefixes say what a token is at a glance (and to secret scanners).
var prefixes = map[TokenKind]string{
	TokenOrg:     "kiln_org_",
	TokenProject: "kiln_prj_",
	TokenBuild:   "kiln_bld_",
	TokenPull:    "kiln_pul_",
}

const alphabet = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"

// RandomString returns n characters drawn uniformly from [0-9a-zA-Z].
func RandomString(n int) string {
	var sb strings.Builder
	max := big.NewInt(int64(len(alphabet)))
	for i := 0; i < n; i++ {
		v, err := rand.Int(rand.Reader, max)
		if err != nil {
			panic(err) // crypto/rand never fails on Linux
		}
		sb.WriteByte(alphabet[v.Int64()])
	}
	return sb.String()
}

// NewSecret returns a fresh token secret of the given kind and its hash.
func NewSecret(kind TokenKind) (secret, hash string) {
	secret = prefixes[kind] + RandomString(40)
	return secret, Hash(secret)
}

// Hash is how token secrets are stored.
func Hash(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// Principal is an authenticated caller.
type Principal struct {
	TokenID   string
	Kind      TokenKind // TokenOrg, TokenProject, TokenBuild or TokenOIDC
	OrgID     string
	ProjectID string // project and build tokens
	BuildID   string // build tokens
	// ProjectIDs are the projects an OIDC-authenticated CI job may build in:
	// those whose trust policies its token matched.
	ProjectIDs []string
	// PolicyIDs are the trust policies an OIDC job's token matched (or
	// that a stored token a job obtained records); what the job obtains is
	// revoked when they are removed. See Bounded.
	PolicyIDs []string
	// ExpiresAt is when an OIDC job's token expires; what the job obtains
	// expires no later. For a stored token a job obtained (PolicyIDs set)
	// it is that token's expiry; zero for kiln's other tokens (their
	// expiry is the token record's).
	ExpiresAt time.Time
	// WideProjectIDs are the projects among ProjectIDs where a matched
	// policy grants the job a project token's rights (TrustPolicy.Role);
	// elsewhere a job has the narrower default role.
	WideProjectIDs []string
}

// IsOrg reports an organization (admin) token.
func (p Principal) IsOrg() bool { return p.Kind == TokenOrg }

// Scope is where a resource sits, which is all a right is checked
// against: its organization, its project and, for a build, the build.
type Scope struct {
	OrgID     string
	ProjectID string
	BuildID   string // "" for a project
}

// Scope is Scoped itself, for a check of a place rather than a resource.
func (s Scope) Scope() Scope { return s }

// Scoped is a resource that says where it sits: project.Project and
// build.Build are. (auth cannot name them: both packages import auth.)
type Scoped interface {
	Scope() Scope
}

// CanSeeProject: org tokens see every project of their org; project and
// OIDC principals only their own. Build tokens see none. (RightsIn's View.)
func (p Principal) CanSeeProject(proj Scoped) bool { return RightsIn(p, proj).Has(View) }

// CanBuild: may create builds in the project (and read its builds).
func (p Principal) CanBuild(proj Scoped) bool { return RightsIn(p, proj).Has(Build) }

// CanAdminProject: may change the project itself (settings, tokens, trust
// policies, deletion). Only organization tokens may.
func (p Principal) CanAdminProject(proj Scoped) bool { return RightsIn(p, proj).Has(Admin) }

// CanUseBuild: may act on one existing build (connection, health, finish,
// status): whoever may build in its project, and a build token its own
// build only.
func (p Principal) CanUseBuild(b Scoped) bool {
	s := b.Scope()
	if p.Kind == TokenBuild {
		return s.OrgID == p.OrgID && s.BuildID == p.BuildID && s.ProjectID == p.ProjectID
	}
	return p.CanBuild(Scope{OrgID: s.OrgID, ProjectID: s.ProjectID})
}

// CanManage: may reset the project's cache, share its builds and drive
// builds it did not create (RightsIn's Manage). A CI job's default role
// may not.
func (p Principal) CanManage(proj Scoped) bool { return RightsIn(p, proj).Has(Manage) }

// CanDriveBuild: may act as an existing build's client (builder
// connections, health, status, finish, cancel): a build token its own
// build, and whoever may manage its project. A CI job drives the builds it
// creates with the build token CreateBuild returned, so its OIDC token
// alone finishes nobody's build.
func (p Principal) CanDriveBuild(b Scoped) bool {
	s := b.Scope()
	if p.Kind == TokenBuild {
		return p.CanUseBuild(b)
	}
	return p.CanManage(Scope{OrgID: s.OrgID, ProjectID: s.ProjectID})
}

// Store is what authentication needs of kiln's store.
type Store interface {
	GetTokenByHash(ctx context.Context, secretHash string) (Token, error)
	// BuildEnded reports whether a build has ended; a missing build is
	// errdefs.ErrNotFound.
	BuildEnded(ctx context.Context, buildID string) (bool, error)
	// MatchTrustPolicies lists the policies of every project for provider
	// whose Owner equals owner ignoring ASCII case, oldest first.
	MatchTrustPolicies(ctx context.Context, provider, owner string) ([]TrustPolicy, error)
}

// Authenticator resolves bearer tokens to principals.
type Authenticator struct {
	Store Store
	Now   func() time.Time
	// OIDC verifies CI providers' JWTs (see trust.go); nil refuses them.
	OIDC OIDCVerifier
	// Audit, if set, is told of security events: trust-policy matches and
	// OIDC denials (see trust.go for the events and their attributes).
	Audit func(ctx context.Context, event string, attrs ...any)
}

// Authenticate checks a bearer secret. Every failure is the same
// ErrUnauthenticated so callers learn nothing about which tokens exist.
func (a *Authenticator) Authenticate(ctx context.Context, secret string) (Principal, error) {
	bad := fmt.Errorf("invalid or expired token: %w", errdefs.ErrUnauthenticated)
	if secret == "" {
		return Principal{}, fmt.Errorf("missing token (pass --token, KILN_TOKEN or DEPOT_TOKEN): %w", errdefs.ErrUnauthenticated)
	}
	if LooksLikeJWT(secret) {
		return a.authenticateOIDC(ctx, secret)
	}
	kindOK := false
	for _, p := range prefixes {
		if strings.HasPrefix(secret, p) && len(secret) < 200 {
			kindOK = true
		}
	}
	if !kindOK {
		return Principal{}, bad
	}
	hash := Hash(secret)
	t, err := a.Store.GetTokenByHash(ctx, hash)
	if err != nil {
		if errdefs.IsNotFound(err) {
			return Principal{}, bad
		}
		return Principal{}, fmt.Errorf("look up token: %w", err)
	}
	// The lookup is by hash already; compare anyway in constant time so a
	// future non-unique index cannot turn into a timing oracle.
	if subtle.ConstantTimeCompare([]byte(t.SecretHash), []byte(hash)) != 1 {
		return Principal{}, bad
	}
	now := time.Now
	if a.Now != nil {
		now = a.Now
	}
	if !t.ExpiresAt.IsZero() && now().After(t.ExpiresAt) {
		return Principal{}, bad
	}
	if t.Kind == TokenBuild {
		// A build token reaches one build, and only while it runs: once the
		// build ended (its --save push comes before FinishBuild), the token
		// and every registry token minted from it are dead.
		ended, err := a.Store.BuildEnded(ctx, t.BuildID)
		if err != nil && !errdefs.IsNotFound(err) {
			return Principal{}, fmt.Errorf("look up build: %w", err)
		}
		if err != nil {
			return Principal{}, bad
		}
		if ended {
			// Only the token's holder learns this, of a build it knows.
			return Principal{}, fmt.Errorf("this build token's build has ended; build tokens work only while their build runs: %w", errdefs.ErrUnauthenticated)
		}
	}
	return t.Principal(), nil
}

// Principal is who a stored token authenticates as (once its secret, its
// expiry and its build were checked).
func (t Token) Principal() Principal {
	p := Principal{TokenID: t.ID, Kind: t.Kind, OrgID: t.OrgID, ProjectID: t.ProjectID, BuildID: t.BuildID}
	if len(t.PolicyIDs) > 0 {
		// A token a CI job obtained: what it mints in turn (a build
		// token's pull tokens) inherits the job's bound (life.go).
		p.PolicyIDs, p.ExpiresAt = t.PolicyIDs, t.ExpiresAt
	}
	return p
}

type ctxKey struct{}

// WithPrincipal returns ctx carrying p.
func WithPrincipal(ctx context.Context, p Principal) context.Context {
	return context.WithValue(ctx, ctxKey{}, p)
}

// FromContext returns the caller, if authenticated.
func FromContext(ctx context.Context) (Principal, bool) {
	p, ok := ctx.Value(ctxKey{}).(Principal)
	return p, ok
}
