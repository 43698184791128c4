package build_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/store"
)

// restart is a new service on the same store and fleet, as kiln serve
// starts after a crash, with its Reconcile run.
func (e env) restart(t *testing.T, cfg build.Config) env {
	t.Helper()
	e.svc = build.NewService(e.st, e.fleet, fakeCerts{}, cfg, slog.New(slog.DiscardHandler))
	if err := e.svc.Reconcile(context.Background()); err != nil {
		t.Fatalf("Reconcile: %v", err)
	}
	return e
}

// connectedBuilds creates n builds in project "pa" whose client got a
// builder (its lease is held), and returns their ids.
func (e env) connectedBuilds(t *testing.T, n int) []string {
	t.Helper()
	ctx := context.Background()
	var ids []string
	for range n {
		b, secret, _ := e.svc.Create(ctx, e.org, "pa", 1, nil)
		p := principalOf(t, e.st, secret)
		e.svc.Connect(ctx, p, b.ID, "amd64")
		e.svc.Connect(ctx, p, b.ID, "amd64")
		ids = append(ids, b.ID)
	}
	return ids
}

// A running client build whose builder lease did not survive a restart is
// failed at once, saying why; one that never got a builder keeps running.
func TestReconcileFailsBuildsWhoseBuilderDidNotSurvive(t *testing.T) {
	e := setup(t, time.Hour)
	ctx := context.Background()
	connected := e.connectedBuilds(t, 1)[0]
	waiting, _, _ := e.svc.Create(ctx, e.org, "pb", 1, nil)

	e = e.restart(t, build.Config{HealthTimeout: time.Hour})
	got, _ := e.st.GetBuild(ctx, connected)
	if got.Status != build.Failed || got.Error != build.RestartedError || got.FinishedAt.IsZero() {
		t.Errorf("connected build after restart: %s %q; want failed: %q", got.Status, got.Error, build.RestartedError)
	}
	if got, _ := e.st.GetBuild(ctx, waiting.ID); got.Status != build.Running {
		t.Errorf("build without a builder after restart: %s; want still running (its client may still connect)", got.Status)
	}
	// A fleet whose leases survive (builders outside kiln serve) keeps them.
	kept, secret2, _ := e.svc.Create(ctx, e.org, "pa", 1, nil)
	e.svc.Connect(ctx, principalOf(t, e.st, secret2), kept.ID, "amd64")
	e = e.restart(t, build.Config{HealthTimeout: time.Hour, Leased: func(projectID, platform, buildID string) bool {
		return projectID == "pa" && platform == "linux/amd64" && buildID == kept.ID
	}})
	if got, _ := e.st.GetBuild(ctx, kept.ID); got.Status != build.Running {
		t.Errorf("build whose lease survived: %s; want running", got.Status)
	}
}

// The failure a restart presumed gives way to the client's report of
// success (it saw its solve end); a report of failure keeps the restart's
// explanation; after that the first end wins as always.
func TestClientSuccessOverturnsPresumedRestartFailure(t *testing.T) {
	e := setup(t, time.Hour)
	ctx := context.Background()
	ids := e.connectedBuilds(t, 2)
	e = e.restart(t, build.Config{HealthTimeout: time.Hour})
	// The build token died with the build; the client finishes with its
	// own token (the org principal here).
	if err := e.svc.Finish(ctx, e.org, ids[0], build.Result{Status: build.Succeeded}); err != nil {
		t.Fatalf("late success after restart: %v", err)
	}
	if got, _ := e.st.GetBuild(ctx, ids[0]); got.Status != build.Succeeded || got.Error != "" {
		t.Errorf("after the client's success: %s %q; want succeeded", got.Status, got.Error)
	}
	if err := e.svc.Finish(ctx, e.org, ids[0], build.Result{Status: build.Failed, Error: "x"}); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("failure after the recorded success: %v; want FailedPrecondition", err)
	}
	if err := e.svc.Finish(ctx, e.org, ids[1], build.Result{Status: build.Failed, Error: "error reading from server: EOF"}); err != nil {
		t.Fatalf("late failure after restart: %v", err)
	}
	if got, _ := e.st.GetBuild(ctx, ids[1]); got.Status != build.Failed || got.Error != build.RestartedError {
		t.Errorf("after the client's failure: %s %q; want the restart's explanation kept", got.Status, got.Error)
	}
	if err := e.svc.Finish(ctx, e.org, ids[1], build.Result{Status: build.Succeeded}); !errors.Is(err, errdefs.ErrFailedPrecondition) ||
		!strings.Contains(err.Error(), build.RestartedError) {
		t.Errorf("success after the client reported failure: %v; want FailedPrecondition with the recorded error", err)
	}
	// A failure that was not presumed is never overturned.
	b, _, _ := e.svc.Create(ctx, e.org, "pa", 1, nil)
	e.svc.BuilderLost("pa", "linux/amd64", []string{b.ID}, errors.New("signal: killed"))
	if err := e.svc.Finish(ctx, e.org, b.ID, build.Result{Status: build.Succeeded}); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("success after a builder loss: %v; want FailedPrecondition", err)
	}
}

// Silence before the server started does not count: after a restart every
// running build gets a full health timeout.
func TestHealthTimeoutCountsFromStart(t *testing.T) {
	const timeout = 200 * time.Millisecond
	e := setup(t, timeout)
	ctx := context.Background()
	b, _, _ := e.svc.Create(ctx, e.org, "pa", 1, nil)
	time.Sleep(timeout + 100*time.Millisecond) // the server is "down"
	e = e.restart(t, build.Config{HealthTimeout: timeout})
	if err := e.svc.ReapAbandoned(ctx); err != nil {
		t.Fatal(err)
	}
	if got, _ := e.st.GetBuild(ctx, b.ID); got.Status != build.Running {
		t.Fatalf("right after a restart: %s; want running (a grace of one timeout)", got.Status)
	}
	time.Sleep(timeout + 50*time.Millisecond)
	if err := e.svc.ReapAbandoned(ctx); err != nil {
		t.Fatal(err)
	}
	if got, _ := e.st.GetBuild(ctx, b.ID); got.Status != build.Canceled {
		t.Errorf("a timeout after the restart: %s; want canceled", got.Status)
	}
}

// A build whose client is talking to its builder is never reaped, and its
// silence counts from the last time it was seen doing so.
func TestActiveBuildIsNotReaped(t *testing.T) {
	const timeout = 200 * time.Millisecond
	var active atomic.Bool
	active.Store(true)
	e := setupWith(t, build.Config{HealthTimeout: timeout, Active: func(string) bool { return active.Load() }})
	ctx := context.Background()
	b, _, _ := e.svc.Create(ctx, e.org, "pa", 1, nil)
	time.Sleep(timeout + 50*time.Millisecond)
	e.svc.ReapAbandoned(ctx)
	if got, _ := e.st.GetBuild(ctx, b.ID); got.Status != build.Running {
		t.Fatalf("a silent client solving on its builder: %s; want running", got.Status)
	}
	active.Store(false)
	e.svc.ReapAbandoned(ctx)
	if got, _ := e.st.GetBuild(ctx, b.ID); got.Status != build.Running {
		t.Fatalf("just after its connection closed: %s; want running", got.Status)
	}
	time.Sleep(timeout + 50*time.Millisecond)
	e.svc.ReapAbandoned(ctx)
	if got, _ := e.st.GetBuild(ctx, b.ID); got.Status != build.Canceled {
		t.Errorf("a timeout after its connection closed: %s; want canceled", got.Status)
	}
}

// refusingStore refuses to write one build, as a full disk would.
type refusingStore struct {
	store.Store
	refuse string
}

func (s refusingStore) UpdateBuild(ctx context.Context, id string, fn func(*build.Build) error) (build.Build, error) {
	if id == s.refuse {
		return build.Build{}, errors.New("database or disk is full")
	}
	return s.Store.UpdateBuild(ctx, id, fn)
}

// A build the store will not write does not stop the others from being
// settled; the error names it.
func TestReconcileSettlesWhatItCan(t *testing.T) {
	e := setup(t, time.Hour)
	ctx := context.Background()
	ids := e.connectedBuilds(t, 2)
	svc := build.NewService(refusingStore{e.st, ids[0]}, e.fleet, fakeCerts{}, build.Config{HealthTimeout: time.Hour}, slog.New(slog.DiscardHandler))
	err := svc.Reconcile(ctx)
	if err == nil || !strings.Contains(err.Error(), ids[0]) {
		t.Errorf("Reconcile = %v; want an error naming %s", err, ids[0])
	}
	if got, _ := e.st.GetBuild(ctx, ids[1]); got.Status != build.Failed {
		t.Errorf("the other build: %s; want failed", got.Status)
	}
}

// When kiln serve stops, the builds on its builders (which stopped with
// it) are failed saying so; a build that never got a builder waits for
// the next start.
func TestStoppedFailsBuildsOnStoppedBuilders(t *testing.T) {
	e := setup(t, time.Hour)
	ctx := context.Background()
	connected := e.connectedBuilds(t, 1)[0]
	waiting, _, _ := e.svc.Create(ctx, e.org, "pb", 1, nil)
	if err := e.svc.Stopped(ctx); err != nil {
		t.Fatal(err)
	}
	if got, _ := e.st.GetBuild(ctx, connected); got.Status != build.Failed || got.Error != build.StoppedError {
		t.Errorf("build on a stopped builder: %s %q; want failed: %q", got.Status, got.Error, build.StoppedError)
	}
	if got, _ := e.st.GetBuild(ctx, waiting.ID); got.Status != build.Running {
		t.Errorf("build without a builder: %s; want still running", got.Status)
	}
}
