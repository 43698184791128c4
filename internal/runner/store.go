package runner

import (
	"context"

	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/project"
	"github.com/kiln-dev/kiln/internal/store"
)

// Store is what the runner needs of kiln's store: the uploaded contexts it
// builds from, and the builds and projects it reads (the build service
// writes them).
type Store interface {
	store.Contexts
	GetProject(ctx context.Context, id string) (project.Project, error)
	GetBuild(ctx context.Context, id string) (build.Build, error)
	// ListBuildsByStatus lists builds in one status, oldest first.
	ListBuildsByStatus(ctx context.Context, status build.Status) ([]build.Build, error)
	ListSteps(ctx context.Context, buildID string) ([]build.Step, error)
	// ListBuildLogs returns up to limit lines of every step of a build
	// after line number after.
	ListBuildLogs(ctx context.Context, buildID string, after int, limit int) ([]build.LogLine, error)
}
