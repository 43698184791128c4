package build_test

import (
	"context"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/build"
)

// TestFollowedBuildCountsEachStepOnce: the builder (StoreSteps, as the
// follower does) and the client (ReportSteps) report the same build; the
// steps are counted once, the client's copies of the builder's logs are
// dropped, and the client's own "[depot]" step is kept but not counted.
func TestFollowedBuildCountsEachStepOnce(t *testing.T) {
	followed := map[string]bool{}
	e := setupWith(t, build.Config{HealthTimeout: time.Minute, Followed: func(id string) bool { return followed[id] }})
	ctx := context.Background()
	b, _, err := e.svc.Create(ctx, e.org, "pa", 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	followed[b.ID] = true
	t0 := time.Unix(1000, 0).UTC()
	t1, t2 := t0.Add(time.Second), t0.Add(2*time.Second)

	// The builder: two Dockerfile steps, one cached, and a RUN's output.
	builder := []build.Step{
		{Digest: "sha256:a", Name: "[1/2] FROM busybox", Cached: true, StartedAt: t0, CompletedAt: t0},
		{Digest: "sha256:b", Name: "[2/2] RUN echo hi", StartedAt: t1, CompletedAt: t2},
	}
	if err := e.svc.StoreSteps(ctx, b.ID, builder, []build.LogLine{{Digest: "sha256:b", At: t1, Message: "hi\n"}}); err != nil {
		t.Fatal(err)
	}
	// The client: the same vertices (partially), the same log line, its
	// own step with a log line, ReportTimings-style steps with no digest,
	// and a vertex re-keyed under a prefixed name as kiln bake reports a
	// target's, which would otherwise be second copies.
	client := []build.Step{
		{Digest: "sha256:b", Name: "[2/2] RUN echo hi", StartedAt: t1},
		{Digest: "sha256:app-b", Name: "[app 2/2] RUN echo hi", StartedAt: t1, CompletedAt: t2},
		{Digest: "sha256:d", Name: "[depot] launching amd64 machine", StartedAt: t0, CompletedAt: t0},
		{Digest: "name:[1/2] FROM busybox", Name: "[1/2] FROM busybox", Cached: true},
		{Digest: "name:[depot] connecting", Name: "[depot] connecting"},
	}
	logs := []build.LogLine{{Digest: "sha256:b", At: t1, Message: "hi\n"}, {Digest: "sha256:d", At: t0, Message: "machine up\n"},
		{Digest: "sha256:a", At: t0, Message: "from client\n"}}
	if err := e.svc.ReportSteps(ctx, e.org, b.ID, client, logs); err != nil {
		t.Fatal(err)
	}

	_, st, err := e.svc.Stats(ctx, e.org, b.ID)
	if err != nil {
		t.Fatal(err)
	}
	if st.TotalSteps != 2 || st.CachedSteps != 1 {
		t.Errorf("stats = %d cached of %d; want 1 of 2", st.CachedSteps, st.TotalSteps)
	}
	steps, _ := e.svc.Steps(ctx, e.org, b.ID)
	var names []string
	for _, s := range steps {
		names = append(names, s.Digest)
	}
	if len(steps) != 4 || steps[1].Digest != "sha256:b" || !steps[1].CompletedAt.Equal(t2) {
		t.Errorf("steps = %v (%+v); want a, b (its completion kept), d and the [depot] one", names, steps)
	}
	run, _, _ := e.svc.Logs(ctx, e.org, b.ID, "sha256:b", 0, 10)
	if len(run) != 1 {
		t.Errorf("RUN logs = %+v; want the builder's line once", run)
	}
	if from, _, _ := e.svc.Logs(ctx, e.org, b.ID, "sha256:a", 0, 10); len(from) != 0 {
		t.Errorf("a client's line of a builder vertex was kept: %+v", from)
	}
	if own, _, _ := e.svc.Logs(ctx, e.org, b.ID, "sha256:d", 0, 10); len(own) != 1 {
		t.Errorf("the client's own step's log = %+v; want 1 line", own)
	}

	// A build nobody follows keeps what its client reports, as before.
	other, _, _ := e.svc.Create(ctx, e.org, "pa", 1, nil)
	if err := e.svc.ReportSteps(ctx, e.org, other.ID, client, logs); err != nil {
		t.Fatal(err)
	}
	if all, _ := e.svc.Steps(ctx, e.org, other.ID); len(all) != 5 {
		t.Errorf("unfollowed build: %d steps, want all 5 reported", len(all))
	}
	_, st, _ = e.svc.Stats(ctx, e.org, other.ID)
	if st.TotalSteps != 3 {
		t.Errorf("unfollowed build counts %d steps; want 3 (never the [depot] ones)", st.TotalSteps)
	}
}

// A build with no Dockerfile steps (raw LLB from depot-go) counts its
// vertices, but never the client's or kiln's own steps.
func TestClientStepsNeverCount(t *testing.T) {
	got := build.CountedSteps([]build.Step{{Name: "[depot] launching amd64 machine"}, {Name: "[kiln] start the project's builder"},
		{Name: "[internal] load remote build context"}, {Name: "mkfile /hello"}})
	if len(got) != 1 || got[0].Name != "mkfile /hello" {
		t.Errorf("counted %+v; want only the LLB vertex", got)
	}
}
