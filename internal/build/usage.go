package build

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/project"
)

// CacheSizer reports how much disk a project's builders' state (layer
// cache, cache mounts, content store) takes. builder.Fleet implements it;
// a fleet that does not reports no cache.
type CacheSizer interface {
	CacheSize(projectID string) (int64, error)
}

// Period is a usage period: builds created in [Start, End).
type Period struct {
	Start, End time.Time
}

// NewPeriod validates a requested period. A zero start is the first
// instant of the current UTC month and a zero end is now (so an empty
// request is "this month so far").
func NewPeriod(start, end, now time.Time) (Period, error) {
	if start.IsZero() {
		y, m, _ := now.UTC().Date()
		start = time.Date(y, m, 1, 0, 0, 0, 0, time.UTC)
	}
	if end.IsZero() {
		end = now
	}
	if !end.After(start) {
		return Period{}, fmt.Errorf("usage period: end_at (%s) must be after start_at (%s): %w",
			end.UTC().Format(time.RFC3339), start.UTC().Format(time.RFC3339), errdefs.ErrInvalid)
	}
	return Period{Start: start.UTC(), End: end.UTC()}, nil
}

// Usage is one project's usage in a period.
type Usage struct {
	Project   project.Project
	Builds    int           // builds created in the period, in any status
	BuildTime time.Duration // sum of BuildTime over them (running builds add 0)
	// SavedTime sums Stats.Saved over the period's builds (only when
	// asked for; see maxSavedBuilds).
	SavedTime  time.Duration
	CacheBytes int64 // the project's builder state on disk now (not per period)
}

// maxSavedBuilds bounds the saved-time estimate's work: it reads the
// steps of at most this many of a project's newest builds in the period.
const maxSavedBuilds = 5000

// CacheGB rounds a cache size up to whole GiB (the unit of cache policies'
// keep_gb), so a project with any cache never shows 0; 0 bytes is 0.
func CacheGB(bytes int64) int32 {
	if bytes <= 0 {
		return 0
	}
	gb := bytes >> 30
	if bytes&(1<<30-1) != 0 {
		gb++
	}
	if gb > math.MaxInt32 {
		return math.MaxInt32
	}
	return int32(gb)
}

// Usage computes usage in period for projects, which the caller looked up
// through the project domain; each must be visible to the principal. The
// result is in the order of projects. withSaved adds SavedTime, which
// costs a read of each build's steps.
func (s *Service) Usage(ctx context.Context, p auth.Principal, projects []project.Project, period Period, withSaved bool) ([]Usage, error) {
	if p.Kind == auth.TokenBuild {
		return nil, fmt.Errorf("build tokens cannot read usage: %w", errdefs.ErrPermission)
	}
	// One aggregate query per organization (in practice, one).
	orgs := map[string]bool{}
	for _, proj := range projects {
		if !p.CanSeeProject(proj) {
			return nil, fmt.Errorf("project %q: %w", proj.ID, errdefs.ErrNotFound)
		}
		orgs[proj.OrgID] = true
	}
	byProject := map[string]ProjectUsage{}
	for org := range orgs {
		rows, err := s.store.BuildUsage(ctx, org, period.Start, period.End)
		if err != nil {
			return nil, err
		}
		for _, r := range rows {
			byProject[r.ProjectID] = r
		}
	}
	out := make([]Usage, 0, len(projects))
	for _, proj := range projects {
		r := byProject[proj.ID]
		u := Usage{Project: proj, Builds: r.Builds, BuildTime: r.BuildTime}
		u.CacheBytes = s.cacheSize(ctx, proj.ID)
		if withSaved && r.Builds > 0 {
			saved, err := s.savedTime(ctx, proj.ID, period)
			if err != nil {
				return nil, err
			}
			u.SavedTime = saved
		}
		out = append(out, u)
	}
	return out, nil
}

// cacheSize asks the fleet; a failed or partial walk is logged and what
// was counted is reported (usage is informational, not a gate).
func (s *Service) cacheSize(ctx context.Context, projectID string) int64 {
	cs, ok := s.fleet.(CacheSizer)
	if !ok {
		return 0
	}
	n, err := cs.CacheSize(projectID)
	if err != nil {
		level := "error"
		if errors.Is(err, errdefs.ErrExhausted) {
			level = "partial"
		}
		s.logger.WarnContext(ctx, "measure builder cache", "project_id", projectID, "result", level, "err", err)
	}
	return n
}

// savedTime sums the saved-time estimate over a project's builds in the
// period (the newest maxSavedBuilds of them).
func (s *Service) savedTime(ctx context.Context, projectID string, period Period) (time.Duration, error) {
	var total time.Duration
	q := Query{ProjectID: projectID, From: period.Start, To: period.End, Limit: 500}
	for done := 0; done < maxSavedBuilds; {
		builds, err := s.store.QueryBuilds(ctx, q)
		if err != nil {
			return 0, err
		}
		for _, b := range builds {
			st, _, err := s.stats(ctx, b)
			if err != nil {
				return 0, err
			}
			total += st.Saved
		}
		done += len(builds)
		if len(builds) < q.Limit {
			break
		}
		last := builds[len(builds)-1]
		q.BeforeCreated, q.BeforeID = last.CreatedAt, last.ID
	}
	return total, nil
}
