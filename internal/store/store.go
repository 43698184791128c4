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
	ID        string
	OrgID     string
	Name      string
	RegionID  string
	Hardware  int32
	KeepGB    int32 // cache size cap in GB; 0 = the server default
	KeepDays  int32 // cache age cap in days; 0 = the server default
	CreatedAt time.Time
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

// Build statuses. A build is created running (a client holds it) and ends in
// exactly one of the other three; terminal statuses never change.
const (
	BuildRunning   = "running"
	BuildSucceeded = "succeeded"
	BuildFailed    = "failed"
	BuildCanceled  = "canceled"
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
}

// Terminal reports whether the build has ended.
func (b Build) Terminal() bool { return b.Status != BuildRunning }

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
}

// Store is kiln's persistence. Implementations are safe for concurrent use.
type Store interface {
	TrustPolicies
	Logins
	AuditLog
	BuildStats
	RegistryIndex

	CreateOrganization(ctx context.Context, o Organization) error
	GetOrganization(ctx context.Context, id string) (Organization, error)
	ListOrganizations(ctx context.Context) ([]Organization, error)

	CreateProject(ctx context.Context, p Project) error
	GetProject(ctx context.Context, id string) (Project, error)
	ListProjects(ctx context.Context, orgID string) ([]Project, error)
	UpdateProject(ctx context.Context, p Project) error
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

	Close() error
}
