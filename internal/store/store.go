package store

import (
	"context"
	"time"
)

// Organization owns projects and org-wide tokens.
type Organization struct {
	ID        string
	Name      string
	CreatedAt time.Time
}

// Project is the unit of isolation: its own builders, cache and tokens.
type Project struct {
	ID       string
	OrgID    string
	Name     string
	RegionID string
	Hardware int32
	KeepGB   int32 // cache size cap in GB; 0 = the server default
	KeepDays int32 // cache age cap in days; 0 = the server default
	// CustomerID is a platform's own id for the customer this project
	// builds for (source builds); unique in the organization, "" for none.
	CustomerID string
	// EgressAllow are the CIDRs (canonical strings: "10.9.0.0/16",
	// "fd00:9::/64") the operator lets this project's RUN steps reach
	// although kiln's egress policy blocks private ranges; nil for none.
	// Only SetProjectEgressAllow changes it: UpdateProject leaves it alone,
	// so a rename racing with a change of the list cannot undo it.
	EgressAllow []string
	CreatedAt   time.Time
}

// Token kinds.
const (
	TokenOrg     = "org"
	TokenProject = "project"
	TokenBuild   = "build"
	// TokenOIDC marks a principal authenticated by a CI provider's OIDC
	// token matching a trust policy; such tokens are verified, never stored.
	TokenOIDC = "oidc"
	// TokenPull reads one project's images from kiln's registry and
	// nothing else: no Connect API accepts it.
	TokenPull = "pull"
)

// Token is a stored credential; the secret itself is never stored, only
// its SHA-256 (SecretHash).
type Token struct {
	ID          string
	Kind        string
	OrgID       string
	ProjectID   string // project and build tokens
	BuildID     string // build tokens
	Description string
	SecretHash  string
	CreatedAt   time.Time
	ExpiresAt   time.Time // zero: never
}

// Build statuses. A client build is created running (a client holds it); a
// source build is created queued, runs, pushes. Every build ends in exactly
// one of succeeded, failed or canceled, and terminal statuses never change.
const (
	BuildQueued    = "queued"
	BuildRunning   = "running"
	BuildPushing   = "pushing"
	BuildSucceeded = "succeeded"
	BuildFailed    = "failed"
	BuildCanceled  = "canceled"
)

// Build kinds: who runs the build.
const (
	// BuildKindClient: a client (kiln build, depot build) runs the solve on
	// the project's builder and reports health, status and the result.
	BuildKindClient = "client"
	// BuildKindSource: kiln runs the build itself from an uploaded context.
	BuildKindSource = "source"
)

// Build is one CreateBuild: a client's build on a project's builders.
type Build struct {
	ID           string
	ProjectID    string
	OrgID        string
	Status       string
	Command      int32
	Options      string // the client's build options, JSON, as reported at creation
	Error        string
	Platforms    string // comma-separated platforms the build acquired builders for
	CreatedAt    time.Time
	StartedAt    time.Time
	FinishedAt   time.Time
	LastHealthAt time.Time
	// Kind is BuildKindClient ("" reads as client) or BuildKindSource.
	Kind string
	// Spec is a source build's request (the runner's JSON); "" otherwise.
	Spec string
	// Secrets are a source build's secrets, sealed with the server's key;
	// cleared when the build ends.
	Secrets string
	// ImageRefs and ImageDigest are what a source build pushed.
	ImageRefs   []string
	ImageDigest string
	// CreatedBy is the id of the stored token that created a client build;
	// "" for OIDC callers and source builds.
	CreatedBy string
}

// Terminal reports whether the build has ended.
func (b Build) Terminal() bool {
	switch b.Status {
	case BuildSucceeded, BuildFailed, BuildCanceled:
		return true
	}
	return false
}

// IsSource reports a build kiln runs itself from an uploaded context.
func (b Build) IsSource() bool { return b.Kind == BuildKindSource }

// Step is one BuildKit vertex of a build as reported by its client.
type Step struct {
	Digest      string
	Name        string
	Cached      bool
	StartedAt   time.Time
	CompletedAt time.Time
	Error       string
}

// LogLine is one line a step printed.
type LogLine struct {
	Digest  string
	At      time.Time
	Message string
	// Seq numbers a build's lines from 1 in the order they were stored;
	// set by the List methods.
	Seq int
}

// Context is an uploaded build context: a blob in the project's storage,
// named by an opaque key the uploader was given.
type Context struct {
	Key       string
	OrgID     string
	ProjectID string
	BlobKey   string
	Size      int64 // declared size; 0 = not declared
	// SHA256 is the hex digest the context must have: the declared one, or
	// the one its first build read ("" until then). PinContextDigest sets it.
	SHA256 string
	// Charged is what the context counts against its project's upload
	// quota: the declared size, or the most its upload URL accepts, until
	// Settled; then its stored size (0 if it was never uploaded).
	Charged   int64
	Settled   bool
	CreatedAt time.Time
	ExpiresAt time.Time // the context (and its blob) are deleted after this
}

// Store is kiln's persistence. Implementations are safe for concurrent use.
type Store interface {
	TrustPolicies
	Logins
	AuditLog
	BuildStats
	RegistryIndex
	Contexts

	CreateOrganization(ctx context.Context, o Organization) error
	GetOrganization(ctx context.Context, id string) (Organization, error)
	ListOrganizations(ctx context.Context) ([]Organization, error)

	CreateProject(ctx context.Context, p Project) error
	GetProject(ctx context.Context, id string) (Project, error)
	ListProjects(ctx context.Context, orgID string) ([]Project, error)
	// GetOrCreateCustomerProject returns the organization's project for a
	// customer id, creating p (whose OrgID and CustomerID must be set) if
	// there is none. Concurrent calls for one customer create one project.
	GetOrCreateCustomerProject(ctx context.Context, p Project) (Project, bool, error)
	// UpdateProject writes p's name, region, hardware and cache policy
	// (not its customer id or egress allow-list).
	UpdateProject(ctx context.Context, p Project) error
	// SetProjectEgressAllow replaces the project's egress allow-list
	// (canonical CIDRs, validated by the caller); nil or empty clears it.
	SetProjectEgressAllow(ctx context.Context, id string, cidrs []string) error
	// DeleteProject removes the project with its tokens, builds, steps and
	// trust policies.
	DeleteProject(ctx context.Context, id string) error

	CreateToken(ctx context.Context, t Token) error
	GetTokenByHash(ctx context.Context, secretHash string) (Token, error)
	GetToken(ctx context.Context, id string) (Token, error)
	// ListTokens lists the non-build tokens of a project ("" lists org tokens).
	ListTokens(ctx context.Context, orgID, projectID string) ([]Token, error)
	UpdateToken(ctx context.Context, id, description string) error
	DeleteToken(ctx context.Context, id string) error

	CreateBuild(ctx context.Context, b Build) error
	GetBuild(ctx context.Context, id string) (Build, error)
	// ListBuilds lists a project's builds newest first, created before
	// `before` (zero: now), at most limit.
	ListBuilds(ctx context.Context, projectID string, before time.Time, limit int) ([]Build, error)
	// ListBuildsByStatus lists builds in one status, oldest first.
	ListBuildsByStatus(ctx context.Context, status string) ([]Build, error)
	// UpdateBuild reads the build, applies fn and writes it back in one
	// transaction. If fn returns an error nothing is written.
	UpdateBuild(ctx context.Context, id string, fn func(*Build) error) (Build, error)

	// PutSteps inserts or updates steps of a build by digest, keeping the
	// order in which digests were first seen.
	PutSteps(ctx context.Context, buildID string, steps []Step) error
	ListSteps(ctx context.Context, buildID string) ([]Step, error)
	AppendLogs(ctx context.Context, buildID string, lines []LogLine) error
	ListLogs(ctx context.Context, buildID, digest string, after int, limit int) ([]LogLine, int, error)
	// ListBuildLogs returns up to limit lines of every step of a build after
	// sequence number `after`, in the order they were stored.
	ListBuildLogs(ctx context.Context, buildID string, after int, limit int) ([]LogLine, error)

	Close() error
}

// Contexts records uploaded build contexts for authorization and retention.
type Contexts interface {
	CreateContext(ctx context.Context, c Context) error
	GetContext(ctx context.Context, key string) (Context, error)
	// CountContexts counts a project's contexts that expire after t.
	CountContexts(ctx context.Context, projectID string, t time.Time) (int, error)
	// ContextBytes sums what a project's contexts that expire after t are
	// charged.
	ContextBytes(ctx context.Context, projectID string, t time.Time) (int64, error)
	// ListUnsettledContexts lists a project's contexts created before t
	// that are not settled, oldest first.
	ListUnsettledContexts(ctx context.Context, projectID string, createdBefore time.Time, limit int) ([]Context, error)
	// SettleContext charges a context what it stores; settled once, later
	// calls change nothing.
	SettleContext(ctx context.Context, key string, charged int64) error
	// PinContextDigest records sha256 as the context's digest unless it
	// has one, and returns the digest it has now. A missing context is
	// ErrNotFound.
	PinContextDigest(ctx context.Context, key, sha256 string) (string, error)
	// ListExpiredContexts lists contexts that expired before t, oldest first.
	ListExpiredContexts(ctx context.Context, t time.Time, limit int) ([]Context, error)
	DeleteContext(ctx context.Context, key string) error
}
