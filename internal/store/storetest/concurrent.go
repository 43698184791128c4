package storetest

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/store"
)

// concurrentStepsAndLogs: a build's reporters (its client, its builder,
// the follower) write steps and log lines at once. Every line gets its own
// sequence number, each writer's lines stay in its order, and reports of
// one step merge into one row whatever their interleaving.
func concurrentStepsAndLogs(t *testing.T, s store.Store) {
	ctx := context.Background()
	seed(t, s, "o1", "p1")
	s.CreateBuild(ctx, build.Build{ID: "b", ProjectID: "p1", OrgID: "o1", Status: build.Running, CreatedAt: now})
	const writers, batches, lines = 8, 5, 3
	var wg sync.WaitGroup
	errs := make(chan error, 2*writers*batches)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for b := range batches {
				var ll []build.LogLine
				for l := range lines {
					ll = append(ll, build.LogLine{Digest: fmt.Sprintf("d%d", w), At: now, Message: fmt.Sprintf("%d %d", w, b*lines+l)})
				}
				if err := s.AppendLogs(ctx, "b", ll); err != nil {
					errs <- fmt.Errorf("AppendLogs: %w", err)
				}
				steps := []build.Step{{Digest: "shared", Name: "shared"}, {Digest: fmt.Sprintf("w%d-%d", w, b), Name: "own"}}
				if err := s.PutSteps(ctx, "b", steps); err != nil {
					errs <- fmt.Errorf("PutSteps: %w", err)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	all, err := s.ListBuildLogs(ctx, "b", 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != writers*batches*lines {
		t.Fatalf("%d lines, want %d", len(all), writers*batches*lines)
	}
	next := make([]int, writers) // each writer's next line
	for i, l := range all {
		if l.Seq != i+1 {
			t.Fatalf("line %d of %d has seq %d: numbers repeat or skip", i+1, len(all), l.Seq)
		}
		var w, n int
		fmt.Sscanf(l.Message, "%d %d", &w, &n)
		if n != next[w] {
			t.Fatalf("writer %d's line %d came where its line %d belongs", w, n, next[w])
		}
		next[w]++
	}
	steps, err := s.ListSteps(ctx, "b")
	if err != nil {
		t.Fatal(err)
	}
	if len(steps) != 1+writers*batches {
		t.Errorf("%d steps, want %d (one shared, merged)", len(steps), 1+writers*batches)
	}
}

// anyBytes: what builders report (log lines, step names, errors) is
// whatever a RUN step printed, invalid UTF-8 and NUL bytes included. The
// store takes it; what reads back keeps every valid part (a database that
// cannot hold the rest may replace it).
func anyBytes(t *testing.T, s store.Store) {
	ctx := context.Background()
	seed(t, s, "o1", "p1")
	s.CreateBuild(ctx, build.Build{ID: "b", ProjectID: "p1", OrgID: "o1", Status: build.Running, CreatedAt: now})
	const bad = "before\x00\xff\xfe middle \xc3 after"
	if err := s.AppendLogs(ctx, "b", []build.LogLine{{Digest: "d", At: now, Message: bad}, {Digest: "d", At: now, Message: "next"}}); err != nil {
		t.Fatalf("AppendLogs: %v", err)
	}
	if err := s.PutSteps(ctx, "b", []build.Step{{Digest: "d", Name: "RUN printf " + bad, Error: bad}}); err != nil {
		t.Fatalf("PutSteps: %v", err)
	}
	if _, err := s.UpdateBuild(ctx, "b", func(b *build.Build) error {
		b.Status, b.Error, b.FinishedAt = build.Failed, bad, now
		return nil
	}); err != nil {
		t.Fatalf("UpdateBuild: %v", err)
	}
	keeps := func(what, got string) {
		t.Helper()
		for _, part := range []string{"before", " middle ", " after"} {
			if !strings.Contains(got, part) {
				t.Errorf("%s = %q: lost %q", what, got, part)
			}
		}
	}
	lines, err := s.ListBuildLogs(ctx, "b", 0, 10)
	if err != nil || len(lines) != 2 {
		t.Fatalf("ListBuildLogs = %+v, %v", lines, err)
	}
	keeps("log line", lines[0].Message)
	steps, err := s.ListSteps(ctx, "b")
	if err != nil || len(steps) != 1 {
		t.Fatalf("ListSteps = %+v, %v", steps, err)
	}
	keeps("step name", steps[0].Name)
	keeps("step error", steps[0].Error)
	b, err := s.GetBuild(ctx, "b")
	if err != nil {
		t.Fatal(err)
	}
	keeps("build error", b.Error)
}
