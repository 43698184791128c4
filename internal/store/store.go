package store

import (
	"context"
	"time"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/project"
)

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

	CreateOrganization(ctx context.Context, o project.Organization) error
	GetOrganization(ctx context.Context, id string) (project.Organization, error)
	ListOrganizations(ctx context.Context) ([]project.Organization, error)

	CreateProject(ctx context.Context, p project.Project) error
	GetProject(ctx context.Context, id string) (project.Project, error)
	ListProjects(ctx context.Context, orgID string) ([]project.Project, error)
	// GetOrCreateCustomerProject returns the organization's project for a
	// customer id, creating p (whose OrgID and CustomerID must be set) if
	// there is none. Concurrent calls for one customer create one project.
	GetOrCreateCustomerProject(ctx context.Context, p project.Project) (project.Project, bool, error)
	// UpdateProject writes p's name, region, hardware and cache policy
	// (not its customer id or egress allow-list).
	UpdateProject(ctx context.Context, p project.Project) error
	// SetProjectEgressAllow replaces the project's egress allow-list
	// (canonical CIDRs, validated by the caller); nil or empty clears it.
	SetProjectEgressAllow(ctx context.Context, id string, cidrs []string) error
	// DeleteProject removes the project with its tokens, builds, steps and
	// trust policies.
	DeleteProject(ctx context.Context, id string) error

	CreateToken(ctx context.Context, t auth.Token) error
	GetTokenByHash(ctx context.Context, secretHash string) (auth.Token, error)
	GetToken(ctx context.Context, id string) (auth.Token, error)
	// ListTokens lists the non-build tokens of a project ("" lists org tokens).
	ListTokens(ctx context.Context, orgID, projectID string) ([]auth.Token, error)
	UpdateToken(ctx context.Context, id, description string) error
	DeleteToken(ctx context.Context, id string) error

	CreateBuild(ctx context.Context, b build.Build) error
	GetBuild(ctx context.Context, id string) (build.Build, error)
	// BuildEnded reports whether a build has ended; a missing build is
	// ErrNotFound.
	BuildEnded(ctx context.Context, id string) (bool, error)
	// ListBuilds lists a project's builds newest first, created before
	// `before` (zero: now), at most limit.
	ListBuilds(ctx context.Context, projectID string, before time.Time, limit int) ([]build.Build, error)
	// ListBuildsByStatus lists builds in one status, oldest first.
	ListBuildsByStatus(ctx context.Context, status build.Status) ([]build.Build, error)
	// UpdateBuild reads the build, applies fn and writes it back in one
	// transaction. If fn returns an error nothing is written.
	UpdateBuild(ctx context.Context, id string, fn func(*build.Build) error) (build.Build, error)

	// PutSteps inserts or updates steps of a build by digest, keeping the
	// order in which digests were first seen.
	PutSteps(ctx context.Context, buildID string, steps []build.Step) error
	ListSteps(ctx context.Context, buildID string) ([]build.Step, error)
	AppendLogs(ctx context.Context, buildID string, lines []build.LogLine) error
	ListLogs(ctx context.Context, buildID, digest string, after int, limit int) ([]build.LogLine, int, error)
	// ListBuildLogs returns up to limit lines of every step of a build after
	// sequence number `after`, in the order they were stored.
	ListBuildLogs(ctx context.Context, buildID string, after int, limit int) ([]build.LogLine, error)

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
