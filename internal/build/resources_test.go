package build

import (
	"testing"
	"time"
)

// Each build holding the builder gets the builder's sample; an OOM kill is an
// event every time; memory above 90 % of the limit once per build; samples
// thin out after two hours and stop at maxSamples.
func TestUsageRows(t *testing.T) {
	builds := map[string]*buildUsage{}
	at := time.Unix(1_700_000_000, 0)
	u := BuilderUsage{ProjectID: "p", Platform: "linux/amd64", Builds: []string{"a", "b"},
		Sample: ResourceSample{At: at, Interval: time.Second, CPUCores: 1, Memory: 95 << 20, MemoryLimit: 100 << 20}, OOMKills: 1}
	samples, events := usageRows(builds, u, nil, nil)
	if len(samples) != 2 || samples[0].BuildID != "a" || samples[1].BuildID != "b" || samples[1].Memory != 95<<20 {
		t.Fatalf("samples = %+v", samples)
	}
	kinds := map[string]int{}
	for _, e := range events {
		kinds[e.Kind]++
	}
	if kinds[EventOOMKill] != 2 || kinds[EventMemoryHigh] != 2 {
		t.Fatalf("events = %+v", events)
	}
	if e := events[0]; e.Message != "the builder ran out of memory (limit 100.0 MiB): the kernel killed a process of it (a RUN step, or the builder itself)" {
		t.Errorf("OOM message %q", e.Message)
	}
	u.OOMKills = 0
	u.Builds = []string{"a"}
	_, events = usageRows(builds, u, nil, nil)
	if len(events) != 0 {
		t.Errorf("second high-memory sample: events %+v, want none (once per build)", events)
	}

	// Bounded: every sample for two hours, then one in thinEvery.
	u.Sample.Memory = 1
	b := &buildUsage{}
	builds["long"] = b
	u.Builds = []string{"long"}
	n := 0
	for i := 0; i < denseSamples+10*thinEvery; i++ {
		s, _ := usageRows(builds, u, nil, nil)
		n += len(s)
	}
	if n != denseSamples+10 {
		t.Errorf("stored %d samples of %d, want %d", n, denseSamples+10*thinEvery, denseSamples+10)
	}
	b.stored, b.seen = maxSamples, 100*thinEvery // a sample that thinning alone would keep
	if s, _ := usageRows(builds, u, nil, nil); len(s) != 0 {
		t.Errorf("a sample past maxSamples was kept")
	}
}
