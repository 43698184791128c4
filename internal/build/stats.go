package build

import (
	"context"
	"math"
	"time"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/steps"
)

// Stats summarizes a finished (or running) build for depot.core.v1
// GetBuild, the share page and usage.
type Stats struct {
	// Duration is FinishedAt - StartedAt: the time the build held its
	// builders, from CreateBuild to FinishBuild. 0 while it runs.
	Duration time.Duration
	// Saved estimates the time the cache saved: for each cached step, how
	// long the same step (by name) took the last time it ran uncached and
	// succeeded in a build of the same project created before this one.
	// A cached step that never ran uncached there (its cache came from
	// elsewhere, or history was deleted) adds nothing: an underestimate,
	// never an invention.
	Saved       time.Duration
	CachedSteps int
	TotalSteps  int
}

// CountedSteps picks the steps total_steps and cached_steps count (see
// steps.Counted), in the order given.
func CountedSteps(all []Step) []Step {
	return steps.Counted(all, func(st Step) string { return st.Name })
}

// BuildTime is how long a build held its builders: FinishedAt - StartedAt
// once it has finished, 0 while it runs (it is billed when it ends).
func BuildTime(b Build) time.Duration {
	if b.StartedAt.IsZero() || b.FinishedAt.IsZero() || !b.FinishedAt.After(b.StartedAt) {
		return 0
	}
	return b.FinishedAt.Sub(b.StartedAt)
}

// ComputeStats is Stats from a build, its reported steps and the last
// uncached durations of its steps' names (see Stats.Saved).
func ComputeStats(b Build, steps []Step, lastUncached map[string]time.Duration) Stats {
	st := Stats{Duration: BuildTime(b)}
	for _, s := range CountedSteps(steps) {
		st.TotalSteps++
		if s.Cached {
			st.CachedSteps++
			st.Saved += lastUncached[s.Name]
		}
	}
	return st
}

// Seconds rounds d to the nearest whole second for the wire's int32
// seconds fields, saturating instead of overflowing.
func Seconds(d time.Duration) int32 {
	if d <= 0 {
		return 0
	}
	s := d / time.Second
	if d%time.Second >= time.Second/2 {
		s++
	}
	if s > math.MaxInt32 {
		return math.MaxInt32
	}
	return int32(s)
}

// stats loads what ComputeStats needs for b.
func (s *Service) stats(ctx context.Context, b Build) (Stats, []Step, error) {
	steps, err := s.store.ListSteps(ctx, b.ID)
	if err != nil {
		return Stats{}, nil, err
	}
	var cached []string
	for _, st := range CountedSteps(steps) {
		if st.Cached {
			cached = append(cached, st.Name)
		}
	}
	last := map[string]time.Duration{}
	if len(cached) > 0 {
		if last, err = s.store.LastUncachedStepDurations(ctx, b.ProjectID, cached, b.CreatedAt); err != nil {
			return Stats{}, nil, err
		}
	}
	return ComputeStats(b, steps, last), steps, nil
}

// Stats returns the build (which the principal must be allowed to use) and
// its statistics.
func (s *Service) Stats(ctx context.Context, p auth.Principal, buildID string) (Build, Stats, error) {
	b, err := s.Get(ctx, p, buildID)
	if err != nil {
		return Build{}, Stats{}, err
	}
	st, _, err := s.stats(ctx, b)
	return b, st, err
}
