package store

import (
	"context"
	"time"

	"github.com/kiln-dev/kiln/internal/build"
)

// BuildStats is the part of the Store that answers build listings, usage
// and shares.
type BuildStats interface {
	QueryBuilds(ctx context.Context, q build.Query) ([]build.Build, error)
	// BuildUsage sums the builds of an organization created in [from, to),
	// per project; projects without builds in the period are left out.
	BuildUsage(ctx context.Context, orgID string, from, to time.Time) ([]build.ProjectUsage, error)
	// LastUncachedStepDurations returns, for each name, how long the most
	// recent uncached, successful, completed step of that name took in one
	// of the project's builds created before `before`. Names never run
	// uncached are absent.
	LastUncachedStepDurations(ctx context.Context, projectID string, names []string, before time.Time) (map[string]time.Duration, error)

	// CreateBuildShare fails with ErrAlreadyExists when the build is
	// already shared (or, astronomically unlikely, the token is taken).
	CreateBuildShare(ctx context.Context, sh build.Share) error
	GetBuildShare(ctx context.Context, buildID string) (build.Share, error)
	GetBuildShareByToken(ctx context.Context, token string) (build.Share, error)
	// DeleteBuildShare fails with ErrNotFound when the build is not shared.
	DeleteBuildShare(ctx context.Context, buildID string) error
}
