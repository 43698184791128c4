package storetest

import (
	"context"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/store"
)

// resourceSamples: samples and events are kept per build, listed oldest
// first, a repeated sample (same build and time) is stored once, and a
// project's deletion takes them along.
func resourceSamples(t *testing.T, s store.Store) {
	ctx := context.Background()
	seed(t, s, "o1", "p1", "p2")
	for _, b := range []build.Build{
		{ID: "b1", ProjectID: "p1", OrgID: "o1", Status: build.Running, CreatedAt: now},
		{ID: "b2", ProjectID: "p2", OrgID: "o1", Status: build.Running, CreatedAt: now},
	} {
		if err := s.CreateBuild(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	t1, t2 := now.Add(time.Second), now.Add(2*time.Second)
	one := build.ResourceSample{BuildID: "b1", At: t2, Interval: time.Second, CPUCores: 1.25, Memory: 100 << 20,
		MemoryPeak: 120 << 20, MemoryLimit: 256 << 20, IORead: 4096, IOWrite: 8192}
	if err := s.PutResourceSamples(ctx, []build.ResourceSample{one,
		{BuildID: "b1", At: t1, Interval: time.Second, CPUCores: 0.5, Memory: 1},
		{BuildID: "b2", At: t1, Memory: 7}}); err != nil {
		t.Fatal(err)
	}
	dup := one
	dup.Memory = 5
	if err := s.PutResourceSamples(ctx, []build.ResourceSample{dup}); err != nil {
		t.Fatalf("repeated sample: %v", err)
	}
	got, err := s.ListResourceSamples(ctx, "b1")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || !got[0].At.Equal(t1) || got[0].CPUCores != 0.5 {
		t.Fatalf("samples of b1 = %+v", got)
	}
	if g := got[1]; !g.At.Equal(t2) || g.Interval != time.Second || g.CPUCores != 1.25 || g.Memory != 100<<20 ||
		g.MemoryPeak != 120<<20 || g.MemoryLimit != 256<<20 || g.IORead != 4096 || g.IOWrite != 8192 || g.BuildID != "b1" {
		t.Errorf("sample = %+v, want %+v", g, one)
	}
	ev := build.ResourceEvent{BuildID: "b1", At: t2, Kind: build.EventOOMKill, Message: "out of memory", Count: 2,
		Memory: 250 << 20, MemoryLimit: 256 << 20}
	if err := s.PutResourceEvents(ctx, []build.ResourceEvent{ev,
		{BuildID: "b1", At: t1, Kind: build.EventMemoryHigh, Message: "high"}}); err != nil {
		t.Fatal(err)
	}
	evs, err := s.ListResourceEvents(ctx, "b1")
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 2 || evs[0].Kind != build.EventMemoryHigh || evs[1] != (build.ResourceEvent{BuildID: "b1", At: evs[1].At, Kind: build.EventOOMKill,
		Message: "out of memory", Count: 2, Memory: 250 << 20, MemoryLimit: 256 << 20}) || !evs[1].At.Equal(t2) {
		t.Fatalf("events of b1 = %+v", evs)
	}
	if evs, _ := s.ListResourceEvents(ctx, "b2"); len(evs) != 0 {
		t.Errorf("events of b2 = %+v, want none", evs)
	}
	if err := s.DeleteProject(ctx, "p1"); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.ListResourceSamples(ctx, "b1"); len(got) != 0 {
		t.Errorf("samples of a deleted project's build: %+v", got)
	}
	if evs, _ := s.ListResourceEvents(ctx, "b1"); len(evs) != 0 {
		t.Errorf("events of a deleted project's build: %+v", evs)
	}
	if got, _ := s.ListResourceSamples(ctx, "b2"); len(got) != 1 {
		t.Errorf("samples of another project's build after the deletion: %+v", got)
	}
}
