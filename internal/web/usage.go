package web

import (
	"context"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/project"
)

// usageTTL is how long the projects page reuses an organization's usage
// (build.Service.Usage with saved time: a walk of each project's cache
// on disk and a pass over up to 5000 builds).
const usageTTL = 60 * time.Second

// usageCache keeps each organization's usage of the last week for
// usageTTL, computing it once at a time: while it is computed again, the
// others get the previous value, or, with none, wait for it. Keyed by
// the organization and its project ids, so a new or deleted project is
// seen at once. mu guards m.
type usageCache struct {
	mu sync.Mutex
	m  map[string]*usageEntry
}

type usageEntry struct {
	usage []build.Usage
	at    time.Time // when usage was computed; zero: never
	// running is closed when the computation under way ends; nil: none.
	running chan struct{}
	err     error // the last computation's, for its waiters
}

// get returns the usage of p's organization over projects, computed by
// compute (with a context of its own, bounded by pageTimeout: waiters may
// outlive the request that started it).
func (c *usageCache) get(ctx context.Context, p auth.Principal, projects []project.Project, now func() time.Time,
	compute func(ctx context.Context) ([]build.Usage, error)) ([]build.Usage, error) {
	ids := make([]string, 0, len(projects))
	for _, pr := range projects {
		ids = append(ids, pr.ID)
	}
	slices.Sort(ids)
	key := p.OrgID + "\x00" + strings.Join(ids, ",")
	for {
		c.mu.Lock()
		if c.m == nil {
			c.m = map[string]*usageEntry{}
		}
		e := c.m[key]
		if e == nil {
			for k, old := range c.m { // forget what nobody asked for lately
				if old.running == nil && now().Sub(old.at) > usageTTL {
					delete(c.m, k)
				}
			}
			e = &usageEntry{}
			c.m[key] = e
		}
		if !e.at.IsZero() && (now().Sub(e.at) < usageTTL || e.running != nil) {
			u := e.usage
			c.mu.Unlock()
			return u, nil // fresh, or the previous one while the next is computed
		}
		if running := e.running; running != nil {
			c.mu.Unlock()
			select {
			case <-running:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			c.mu.Lock()
			err := e.err
			c.mu.Unlock()
			if err != nil {
				return nil, err
			}
			continue
		}
		e.running = make(chan struct{})
		c.mu.Unlock()
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), pageTimeout)
		u, err := compute(cctx)
		cancel()
		c.mu.Lock()
		e.err = err
		if err == nil {
			e.usage, e.at = u, now()
		}
		close(e.running)
		e.running = nil
		c.mu.Unlock()
		return u, err
	}
}
