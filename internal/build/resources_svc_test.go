package build_test

import (
	"context"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/errdefs"
)

// Usage the fleet reports reaches the store through Run's writer, and is
// read back by whoever may read the build; another project's token gets
// NotFound, as for the build itself.
func TestBuilderUsageRecordedAndAuthorized(t *testing.T) {
	e := setup(t, time.Minute)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b, _, err := e.svc.Create(ctx, e.org, "pa", 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { e.svc.Run(ctx); close(done) }()
	at := time.Now().UTC().Truncate(time.Millisecond)
	e.svc.RecordBuilderUsage(build.BuilderUsage{ProjectID: "pa", Platform: "linux/amd64", Builds: []string{b.ID}, OOMKills: 2,
		Sample: build.ResourceSample{At: at, Interval: time.Second, CPUCores: 0.75, Memory: 240 << 20, MemoryLimit: 256 << 20}})
	var res build.Resources
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if res, err = e.svc.Resources(ctx, e.org, b.ID); err != nil {
			t.Fatal(err)
		}
		if len(res.Samples) > 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(res.Samples) != 1 || res.Samples[0].CPUCores != 0.75 || !res.Samples[0].At.Equal(at) {
		t.Fatalf("samples = %+v", res.Samples)
	}
	kinds := map[string]bool{}
	for _, ev := range res.Events {
		kinds[ev.Kind] = true
	}
	if len(res.Events) != 2 || !kinds[build.EventOOMKill] || !kinds[build.EventMemoryHigh] {
		t.Fatalf("events = %+v, want an OOM kill and memory above 90 %%", res.Events)
	}
	other := auth.Principal{Kind: auth.TokenProject, OrgID: "o", ProjectID: "pb"}
	if _, err := e.svc.Resources(ctx, other, b.ID); !errdefs.IsNotFound(err) {
		t.Errorf("B's project token reading A's build resources: %v, want NotFound", err)
	}
	cancel()
	<-done
}
