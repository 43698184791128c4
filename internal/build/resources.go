package build

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/units"
)

// A build's resource samples and events say what its builder used while the
// build held it: CPU, memory and disk I/O about every second, an OOM kill,
// memory above 90 % of the builder's limit. They are the builder's numbers,
// not the build's own: builds sharing a project's builder at the same time
// each get the same samples.
//
// The fleet reports usage (RecordBuilderUsage) from its sampler; the
// service queues it and a goroutine of Run writes it to the store in
// batches. Nothing here runs on a build's path, and a full queue drops
// reports (counted) rather than wait.

// ResourceSample is one sampling interval of a build's builder.
type ResourceSample struct {
	BuildID  string
	At       time.Time     // end of the interval
	Interval time.Duration // its length
	// CPUCores is CPU time over wall time in the interval: 1.5 = one and a
	// half cores busy.
	CPUCores float64
	// Memory is the working set at At (usage less inactive file cache);
	// MemoryPeak the builder's highest usage so far (cgroup v1: page
	// cache included; 0 if the kernel does not say).
	Memory, MemoryPeak int64
	MemoryLimit        int64 // the builder's limit; 0: none
	IORead, IOWrite    int64 // block-device bytes read and written in the interval
}

// Resource event kinds.
const (
	// EventOOMKill: the kernel killed processes of the builder (a RUN
	// step, or buildkitd) for want of memory.
	EventOOMKill = "oom_kill"
	// EventMemoryHigh: the builder's memory went above 90 % of its limit;
	// recorded once per build.
	EventMemoryHigh = "memory_high"
)

// ResourceEvent is something a build's builder went through.
type ResourceEvent struct {
	BuildID     string
	At          time.Time
	Kind        string // EventOOMKill, EventMemoryHigh
	Message     string // for the build's user
	Count       int    // EventOOMKill: processes killed in the interval (at least 1)
	Memory      int64  // the builder's memory when it was seen
	MemoryLimit int64
}

// Resources are a build's samples (oldest first) and events.
type Resources struct {
	Samples []ResourceSample
	Events  []ResourceEvent
}

// BuilderUsage is what the fleet reports for a builder each sampling
// interval, for the builds (lease ids) that held it during it.
type BuilderUsage struct {
	ProjectID, Platform string
	Builds              []string
	Sample              ResourceSample // BuildID unset
	OOMKills            int            // processes killed for want of memory in the interval
}

// ResourceStore keeps samples and events (internal/store).
type ResourceStore interface {
	// PutResourceSamples stores samples; one already stored (same build
	// and time) is kept.
	PutResourceSamples(ctx context.Context, samples []ResourceSample) error
	PutResourceEvents(ctx context.Context, events []ResourceEvent) error
	// ListResourceSamples lists a build's samples, oldest first.
	ListResourceSamples(ctx context.Context, buildID string) ([]ResourceSample, error)
	// ListResourceEvents lists a build's events, oldest first.
	ListResourceEvents(ctx context.Context, buildID string) ([]ResourceEvent, error)
}

const (
	// Samples per build: every one for the first two hours (at one a
	// second), then one in 30, up to maxSamples in all.
	denseSamples   = 2 * 60 * 60
	thinEvery      = 30
	maxSamples     = denseSamples + 2*60*60 // then one in 30 for 60 more hours
	highMemoryFrac = 0.9
	// resourceQueue bounds the reports waiting to be written.
	resourceQueue = 1024
	// resourceFlush is how often queued rows are written.
	resourceFlush = 2 * time.Second
	// resourceForget: a build not reported for this long is forgotten by
	// the writer (its counts and its memory_high flag).
	resourceForget = 10 * time.Minute
)

// resourceRecorder is the queue between the fleet's sampler and the store.
type resourceRecorder struct {
	queue   chan BuilderUsage
	dropped atomic.Uint64
}

func newResourceRecorder() *resourceRecorder {
	return &resourceRecorder{queue: make(chan BuilderUsage, resourceQueue)}
}

// RecordBuilderUsage queues a builder's usage for the builds that held it.
// It never blocks: when the writer is behind, the report is dropped and
// counted (ResourceReportsDropped).
func (s *Service) RecordBuilderUsage(u BuilderUsage) {
	select {
	case s.res.queue <- u:
	default:
		if s.res.dropped.Add(1) == 1 {
			s.logger.Warn("builder usage reports dropped: the store is behind", "project_id", u.ProjectID)
		}
	}
}

// ResourceReportsDropped counts reports RecordBuilderUsage dropped.
func (s *Service) ResourceReportsDropped() uint64 { return s.res.dropped.Load() }

// Resources returns a build's samples and events to p, who must be allowed
// to read the build (as Get).
func (s *Service) Resources(ctx context.Context, p auth.Principal, buildID string) (Resources, error) {
	if _, err := s.Get(ctx, p, buildID); err != nil {
		return Resources{}, err
	}
	samples, err := s.store.ListResourceSamples(ctx, buildID)
	if err != nil {
		return Resources{}, err
	}
	events, err := s.store.ListResourceEvents(ctx, buildID)
	if err != nil {
		return Resources{}, err
	}
	return Resources{Samples: samples, Events: events}, nil
}

// buildUsage is what the writer remembers of one build.
type buildUsage struct {
	seen, stored int
	high         bool // memory_high recorded
	last         time.Time
}

// writeResources turns queued reports into rows and writes them every
// resourceFlush, until ctx ends (then what is pending is written).
func (s *Service) writeResources(ctx context.Context) {
	builds := map[string]*buildUsage{}
	var samples []ResourceSample
	var events []ResourceEvent
	flush := func() {
		if len(samples) == 0 && len(events) == 0 {
			return
		}
		wctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := s.store.PutResourceSamples(wctx, samples); err != nil {
			s.logger.Error("store builder resource samples", "samples", len(samples), "err", err)
		}
		if err := s.store.PutResourceEvents(wctx, events); err != nil {
			s.logger.Error("store builder resource events", "events", len(events), "err", err)
		}
		samples, events = samples[:0], events[:0]
		now := time.Now()
		for id, b := range builds {
			if now.Sub(b.last) > resourceForget {
				delete(builds, id)
			}
		}
	}
	t := time.NewTicker(resourceFlush)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			for {
				select {
				case u := <-s.res.queue:
					samples, events = usageRows(builds, u, samples, events)
				default:
					flush()
					return
				}
			}
		case u := <-s.res.queue:
			samples, events = usageRows(builds, u, samples, events)
		case <-t.C:
			flush()
		}
	}
}

// usageRows appends the rows one report makes for each of its builds: a
// sample (unless the build has enough), an OOM kill event, a memory_high
// event the first time.
func usageRows(builds map[string]*buildUsage, u BuilderUsage, samples []ResourceSample, events []ResourceEvent) ([]ResourceSample, []ResourceEvent) {
	sm := u.Sample
	for _, id := range u.Builds {
		b := builds[id]
		if b == nil {
			b = &buildUsage{}
			builds[id] = b
		}
		b.last = time.Now()
		if b.stored < maxSamples && (b.seen < denseSamples || b.seen%thinEvery == 0) {
			s := sm
			s.BuildID = id
			samples = append(samples, s)
			b.stored++
		}
		b.seen++
		if u.OOMKills > 0 {
			events = append(events, ResourceEvent{BuildID: id, At: sm.At, Kind: EventOOMKill, Count: u.OOMKills,
				Memory: sm.Memory, MemoryLimit: sm.MemoryLimit, Message: oomMessage(u.OOMKills, sm.MemoryLimit)})
		}
		if !b.high && sm.MemoryLimit > 0 && float64(sm.Memory) >= highMemoryFrac*float64(sm.MemoryLimit) {
			b.high = true
			events = append(events, ResourceEvent{BuildID: id, At: sm.At, Kind: EventMemoryHigh,
				Memory: sm.Memory, MemoryLimit: sm.MemoryLimit,
				Message: fmt.Sprintf("the builder's memory reached %d%% of its limit (%s of %s)",
					sm.Memory*100/sm.MemoryLimit, units.Bytes(sm.Memory), units.Bytes(sm.MemoryLimit))})
		}
	}
	return samples, events
}

func oomMessage(n int, limit int64) string {
	what := "a process"
	if n > 1 {
		what = fmt.Sprintf("%d processes", n)
	}
	if limit > 0 {
		return fmt.Sprintf("the builder ran out of memory (limit %s): the kernel killed %s of it (a RUN step, or the builder itself)", units.Bytes(limit), what)
	}
	return fmt.Sprintf("the kernel killed %s of the builder for want of memory", what)
}
