package web

import (
	"context"
	"sync"
	"time"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/build"
)

// The build page polls every second, and each poll read the build three
// times, its steps twice, every resource sample and, on a first poll,
// thirty earlier builds. These caches keep what a poll may reuse; the
// build itself (Builds.Stats) is still read, and so authorized, on every
// poll.

// Live polls a session may make: livePollBurst at once, livePollRate a
// second; past that, 429 with Retry-After (app.js waits as told).
const (
	livePollRate  = 4
	livePollBurst = 8
)

// How long a build's steps and resource samples are reused, by every
// session polling it: a running (or just ended) build's for stepsFresh,
// one that ended over settled ago (nothing is stored for it any more)
// for stepsSettled.
const (
	stepsFresh   = 2 * time.Second
	settled      = time.Minute
	stepsSettled = time.Minute
)

// historyTTL is how long a session reuses a build's step history (its
// first poll's, reloading the page included).
const historyTTL = 30 * time.Second

// maxCached bounds each cache's entries; past it, the stale ones go, then
// any.
const maxCached = 1000

type stepsEntry struct {
	steps []build.Step
	res   build.Resources
	until time.Time
}

type historyEntry struct {
	runs  map[string][]stepRun
	until time.Time
}

// liveCache holds builds' steps and resources (by build id) and the step
// histories sessions were sent (by session and build). mu guards both.
type liveCache struct {
	mu      sync.Mutex
	steps   map[string]stepsEntry
	history map[string]historyEntry
}

// prune bounds m at limit entries: once it has that many, the stale ones
// go, then any until half are left.
func prune[V any](m map[string]V, limit int, stale func(V) bool) {
	if len(m) < limit {
		return
	}
	for k, v := range m {
		if stale(v) {
			delete(m, k)
		}
	}
	for k := range m {
		if len(m) < limit/2 {
			return
		}
		delete(m, k)
	}
}

// stepsOf returns b's steps and resources, reused while fresh. The caller
// has read and authorized b.
func (d *Dashboard) stepsOf(ctx context.Context, p auth.Principal, b build.Build) ([]build.Step, build.Resources, error) {
	now := d.cfg.Now()
	c := &d.liveCache
	c.mu.Lock()
	e, ok := c.steps[b.ID]
	c.mu.Unlock()
	if ok && now.Before(e.until) {
		return e.steps, e.res, nil
	}
	steps, err := d.cfg.Builds.Steps(ctx, p, b.ID)
	if err != nil {
		return nil, build.Resources{}, err
	}
	res, err := d.cfg.Builds.Resources(ctx, p, b.ID)
	if err != nil {
		return nil, build.Resources{}, err
	}
	ttl := stepsFresh
	if b.Terminal() && !b.FinishedAt.IsZero() && now.Sub(b.FinishedAt) > settled {
		ttl = stepsSettled
	}
	c.mu.Lock()
	if c.steps == nil {
		c.steps = map[string]stepsEntry{}
	}
	prune(c.steps, maxCached, func(e stepsEntry) bool { return now.After(e.until) })
	c.steps[b.ID] = stepsEntry{steps: steps, res: res, until: now.Add(ttl)}
	c.mu.Unlock()
	return steps, res, nil
}

// historyFor returns the step history sessionKey was sent for b within
// historyTTL, or computes it.
func (d *Dashboard) historyFor(ctx context.Context, session string, p auth.Principal, b build.Build, steps []liveStep) (map[string][]stepRun, error) {
	now := d.cfg.Now()
	key := session + "\x00" + b.ID
	c := &d.liveCache
	c.mu.Lock()
	e, ok := c.history[key]
	c.mu.Unlock()
	if ok && now.Before(e.until) {
		return e.runs, nil
	}
	runs, err := d.history(ctx, p, b, steps)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if c.history == nil {
		c.history = map[string]historyEntry{}
	}
	prune(c.history, maxCached, func(e historyEntry) bool { return now.After(e.until) })
	c.history[key] = historyEntry{runs: runs, until: now.Add(historyTTL)}
	c.mu.Unlock()
	return runs, nil
}
