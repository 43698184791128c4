package store

import (
	"context"
	"time"

	"github.com/kiln-dev/kiln/internal/audit"
	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/cluster"
	"github.com/kiln-dev/kiln/internal/login"
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

// Store is kiln's persistence: the union of what each part of kiln
// declares it needs (the domain packages' stores, the runner's contexts,
// the registry's index), for the server that wires them. Implementations
// are safe for concurrent use.
type Store interface {
	project.Store
	build.Store
	auth.Store
	login.Store
	audit.Store
	RegistryIndex
	Contexts
	cluster.Store
	WebSessions

	ListOrganizations(ctx context.Context) ([]project.Organization, error)
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
