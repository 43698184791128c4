package metrics

import (
	"context"
	"sync"
	"time"

	"github.com/kiln-dev/kiln/internal/build"
)

// The Metrics are a build.Observer: server wiring adds them to
// build.Config.Observer's build.Observers.
var _ build.Observer = (*Metrics)(nil)

// endedBuild is a build whose steps Run counts once its follower is done.
type endedBuild struct {
	id   string
	kind string
	at   time.Time // when it ended (here, not the record's FinishedAt)
}

// BuildCreated counts the build; a client build is created running, so
// it has started too.
func (m *Metrics) BuildCreated(b build.Build) {
	kind := string(b.EffectiveKind())
	m.buildsCreated.WithLabelValues(kind).Inc()
	if b.Status == build.Running {
		m.buildsStarted.WithLabelValues(kind).Inc()
	}
}

// BuildStarted counts a source build leaving the queue and how long it
// waited there.
func (m *Metrics) BuildStarted(b build.Build) {
	m.buildsStarted.WithLabelValues(string(b.EffectiveKind())).Inc()
	if !b.CreatedAt.IsZero() && b.StartedAt.After(b.CreatedAt) {
		m.queueWait.Observe(b.StartedAt.Sub(b.CreatedAt).Seconds())
	} else {
		m.queueWait.Observe(0)
	}
}

// endedIDs is how many of the latest ended builds' ids endedOnce keeps.
const endedIDs = 16384

// endedOnce remembers the ids of the last endedIDs builds that ended, so
// that a build reported ended again (build.Observer: a presumed failure
// overturned by the client's success, within the same run of kiln serve)
// is counted once. Memory stays bounded: the oldest id is forgotten when a
// new one comes. Safe for concurrent use.
type endedOnce struct {
	mu   sync.Mutex
	ids  map[string]struct{}
	ring []string // the ids in ids, in a ring; next is the oldest's index
	next int
}

// first reports whether id is not among the ended builds remembered, and
// remembers it.
func (s *endedOnce) first(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.ids[id]; ok {
		return false
	}
	if s.ids == nil {
		s.ids = make(map[string]struct{})
	}
	if len(s.ring) < endedIDs {
		s.ring = append(s.ring, id)
	} else {
		delete(s.ids, s.ring[s.next])
		s.ring[s.next] = id
		s.next = (s.next + 1) % endedIDs
	}
	s.ids[id] = struct{}{}
	return true
}

// BuildEnded counts the build by final status, observes how long it ran
// (if it started), and queues it to have its steps counted. A build
// reported ended again is counted as it first ended (counters only go
// up): a failure kiln presumed at restart stays counted as failed even
// when the client's success overturns it. It never blocks: with the queue
// full the build's steps go uncounted.
func (m *Metrics) BuildEnded(b build.Build) {
	kind, status := string(b.EffectiveKind()), string(b.Status)
	if !b.Status.Terminal() {
		return // not an end: nothing to count it as
	}
	if !m.endedOnce.first(b.ID) {
		return
	}
	m.buildsFinished.WithLabelValues(kind, status).Inc()
	if !b.StartedAt.IsZero() {
		m.buildDuration.WithLabelValues(kind, status).Observe(build.BuildTime(b).Seconds())
	}
	if m.cfg.Steps == nil {
		return
	}
	select {
	case m.ended <- endedBuild{id: b.ID, kind: kind, at: time.Now()}:
	default:
		m.stepsUncounted.WithLabelValues("queue_full").Inc()
	}
}

// Run counts the steps of ended builds, each StepsDelay after its end,
// until ctx ends. The caller owns the goroutine; builds still queued when
// ctx ends are not counted.
func (m *Metrics) Run(ctx context.Context) {
	if m.cfg.Steps == nil {
		return
	}
	for {
		var e endedBuild
		select {
		case <-ctx.Done():
			return
		case e = <-m.ended:
		}
		// Builds are queued in the order they end: waiting for this one
		// never delays a later one past its own time.
		if wait := time.Until(e.at.Add(m.cfg.StepsDelay)); wait > 0 {
			timer := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				timer.Stop()
				return
			case <-timer.C:
			}
		}
		m.countSteps(ctx, e)
	}
}

// countSteps adds an ended build's counted steps (build.CountedSteps: what
// GetBuild's cached and total steps count) to kiln_build_steps_total.
func (m *Metrics) countSteps(ctx context.Context, e endedBuild) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	steps, err := m.cfg.Steps(ctx, e.id)
	if err != nil {
		m.stepsUncounted.WithLabelValues("store_error").Inc()
		m.log.Warn("metrics: count a build's steps", "build_id", e.id, "err", err)
		return
	}
	var cached, executed int
	for _, s := range build.CountedSteps(steps) {
		if s.Cached {
			cached++
		} else {
			executed++
		}
	}
	m.steps.WithLabelValues(e.kind, "cached").Add(float64(cached))
	m.steps.WithLabelValues(e.kind, "executed").Add(float64(executed))
}
