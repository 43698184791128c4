package build

import (
	"context"
	"math"
	"regexp"
	"strings"
	"time"

	"github.com/kiln-dev/kiln/internal/auth"
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

// dockerfileStepRe matches the vertex names BuildKit's Dockerfile frontend
// gives the user's instructions: "[stage n/m] INSTRUCTION", "[n/m] …", and
// with a platform prefix in multi-platform builds "[linux/amd64 stage n/m] …".
var dockerfileStepRe = regexp.MustCompile(`^\[[^\]]*\b\d+/\d+\] `)

// IsUserStep reports whether a reported vertex counts as a build step in
// total_steps and cached_steps: the numbered Dockerfile instructions a user
// sees (and sees marked CACHED) in `kiln build --progress plain`. BuildKit's
// own work is not counted: "[internal] load …", "[auth] …", exporting,
// sending the result; nor are the client's and kiln's own steps
// ("[depot] …", "[kiln] …", IsClientStep).
//
// A build that has no Dockerfile-shaped steps at all (raw LLB from
// depot-go) counts every vertex except BuildKit's own; see countSteps.
func IsUserStep(name string) bool { return dockerfileStepRe.MatchString(name) }

// buildkitOwn are the name prefixes of vertices BuildKit adds itself.
var buildkitOwn = []string{"[internal]", "[auth]", "exporting ", "importing ", "sending tarball", "resolving provenance",
	"writing image", "naming to", "unpacking to", "copying files", "pushing ", "merging manifest"}

func isBuildkitOwn(name string) bool {
	if IsClientStep(name) {
		return true // not BuildKit's, but not the build's either
	}
	for _, p := range buildkitOwn {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return name == ""
}

// CountedSteps picks the steps total_steps and cached_steps count (see
// IsUserStep), in the order given.
func CountedSteps(steps []Step) []Step {
	var out []Step
	for _, st := range steps {
		if IsUserStep(st.Name) {
			out = append(out, st)
		}
	}
	if len(out) > 0 {
		return out
	}
	for _, st := range steps {
		if !isBuildkitOwn(st.Name) {
			out = append(out, st)
		}
	}
	return out
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
