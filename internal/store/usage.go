package store

import (
	"context"
	"time"
)

// BuildShare makes one build readable without authentication by whoever
// holds Token (the last segment of its share URL).
type BuildShare struct {
	BuildID   string
	Token     string
	CreatedBy string // the sharing token's id
	CreatedAt time.Time
}

// BuildQuery selects a project's builds, newest first (by CreatedAt, then
// ID).
type BuildQuery struct {
	ProjectID string
	// From and To bound CreatedAt to [From, To); zero values are unbounded.
	From, To time.Time
	// BeforeCreated and BeforeID continue a listing after the last build of
	// the previous page: only builds ordered strictly after it are returned.
	// A zero BeforeCreated starts at the newest.
	BeforeCreated time.Time
	BeforeID      string
	Limit         int
}

// ProjectBuildUsage is what one project's builds used in a period.
type ProjectBuildUsage struct {
	ProjectID string
	Builds    int // builds created in the period, in any status
	// BuildTime sums FinishedAt - StartedAt over the period's builds that
	// have finished; running builds add nothing until they end.
	BuildTime time.Duration
}

// BuildStats is the part of the Store that answers build listings, usage
// and shares.
type BuildStats interface {
	QueryBuilds(ctx context.Context, q BuildQuery) ([]Build, error)
	// BuildUsage sums the builds of an organization created in [from, to),
	// per project; projects without builds in the period are left out.
	BuildUsage(ctx context.Context, orgID string, from, to time.Time) ([]ProjectBuildUsage, error)
	// LastUncachedStepDurations returns, for each name, how long the most
	// recent uncached, successful, completed step of that name took in one
	// of the project's builds created before `before`. Names never run
	// uncached are absent.
	LastUncachedStepDurations(ctx context.Context, projectID string, names []string, before time.Time) (map[string]time.Duration, error)

	// CreateBuildShare fails with ErrAlreadyExists when the build is
	// already shared (or, astronomically unlikely, the token is taken).
	CreateBuildShare(ctx context.Context, sh BuildShare) error
	GetBuildShare(ctx context.Context, buildID string) (BuildShare, error)
	GetBuildShareByToken(ctx context.Context, token string) (BuildShare, error)
	// DeleteBuildShare fails with ErrNotFound when the build is not shared.
	DeleteBuildShare(ctx context.Context, buildID string) error
}
