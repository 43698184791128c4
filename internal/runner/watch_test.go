package runner

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	bkclient "github.com/moby/buildkit/client"
	digest "github.com/opencontainers/go-digest"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/project"
	"github.com/kiln-dev/kiln/internal/steps"
)

// A watcher that comes after the build sees it whole, in reading order: the
// build, each step's start, the log lines, each step's end; another
// project's token sees nothing.
func TestWatchReplaysInOrder(t *testing.T) {
	ctx := context.Background()
	st, blobs, dir := testStores(t)
	st.CreateOrganization(ctx, project.Organization{ID: "o1", Name: "o1"})
	st.CreateProject(ctx, project.Project{ID: "p1", OrgID: "o1", Name: "p1"})
	st.CreateProject(ctx, project.Project{ID: "p2", OrgID: "o1", Name: "p2"})
	now := time.Now().UTC()
	st.CreateBuild(ctx, build.Build{ID: "b1", ProjectID: "p1", OrgID: "o1", Status: build.Succeeded, Kind: build.KindSource, CreatedAt: now})
	st.PutSteps(ctx, "b1", []build.Step{{Digest: "d1", Name: "RUN one", StartedAt: now, CompletedAt: now.Add(time.Second)}})
	st.AppendLogs(ctx, "b1", []build.LogLine{{Digest: "d1", At: now, Message: "line 1\n"}, {Digest: "d1", At: now, Message: "line 2\n"}})

	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	r, err := New(st, blobs, build.NewService(st, nil, nil, build.Config{}, logger), &project.Service{Store: st},
		Config{WorkDir: dir + "/work", SecretsKey: []byte(strings.Repeat("k", 32)), Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	err = r.Watch(ctx, auth.Principal{Kind: auth.TokenProject, OrgID: "o1", ProjectID: "p1"}, "b1", true, func(e Event) error {
		switch {
		case e.Build != nil:
			got = append(got, "build "+string(e.Build.Status))
		case e.Step != nil && e.Step.CompletedAt.IsZero():
			got = append(got, "start "+e.Step.Name)
		case e.Step != nil:
			got = append(got, "end "+e.Step.Name)
		case e.Log != nil:
			got = append(got, "log "+strings.TrimSpace(e.Log.Message))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := "build succeeded|start RUN one|log line 1|log line 2|end RUN one"
	if strings.Join(got, "|") != want {
		t.Errorf("events:\n%s\nwant\n%s", strings.Join(got, "|"), want)
	}
	err = r.Watch(ctx, auth.Principal{Kind: auth.TokenProject, OrgID: "o1", ProjectID: "p2"}, "b1", true, func(Event) error {
		t.Error("another project's token got an event")
		return nil
	})
	if !errdefs.IsNotFound(err) {
		t.Errorf("another project's token: %v, want NotFound", err)
	}
}

// Steps may be stored in another order than they ran (a client reports them
// as it saw them). A watcher sends starts, log lines and ends in the order
// they happened, as buildx shows them (readers number steps on first
// sight), and a step that never started not at all.
func TestWatchSendsStepsInStartOrder(t *testing.T) {
	ctx := context.Background()
	st, blobs, dir := testStores(t)
	st.CreateOrganization(ctx, project.Organization{ID: "o1", Name: "o1"})
	st.CreateProject(ctx, project.Project{ID: "p1", OrgID: "o1", Name: "p1"})
	now := time.Now().UTC().Truncate(time.Millisecond)
	st.CreateBuild(ctx, build.Build{ID: "b1", ProjectID: "p1", OrgID: "o1", Status: build.Succeeded, Kind: build.KindSource, CreatedAt: now})
	st.PutSteps(ctx, "b1", []build.Step{
		{Digest: "d3", Name: "[2/2] RUN two", StartedAt: now.Add(3 * time.Second), CompletedAt: now.Add(4 * time.Second)},
		{Digest: "d2", Name: "[1/2] COPY one", StartedAt: now.Add(time.Second), CompletedAt: now.Add(2 * time.Second)},
		{Digest: "dx", Name: "never started"},
		{Digest: "d1", Name: "[kiln] context", StartedAt: now, CompletedAt: now.Add(500 * time.Millisecond)},
	})
	st.AppendLogs(ctx, "b1", []build.LogLine{
		{Digest: "d1", At: now.Add(100 * time.Millisecond), Message: "l1"},
		{Digest: "d3", At: now.Add(3500 * time.Millisecond), Message: "l3"},
		{Digest: "d3", At: now.Add(4 * time.Second), Message: "l3 at its end"},
	})
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	r, err := New(st, blobs, build.NewService(st, nil, nil, build.Config{}, logger), &project.Service{Store: st},
		Config{WorkDir: dir + "/work", SecretsKey: []byte(strings.Repeat("k", 32)), Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	err = r.Watch(ctx, auth.Principal{Kind: auth.TokenProject, OrgID: "o1", ProjectID: "p1"}, "b1", false, func(e Event) error {
		switch {
		case e.Step != nil && e.Step.CompletedAt.IsZero():
			got = append(got, "start "+e.Step.Digest)
		case e.Step != nil:
			got = append(got, "end "+e.Step.Digest)
		case e.Log != nil:
			got = append(got, "log "+e.Log.Message)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := "start d1|log l1|end d1|start d2|end d2|start d3|log l3|log l3 at its end|end d3"; strings.Join(got, "|") != want {
		t.Errorf("step events %s, want %s", strings.Join(got, "|"), want)
	}
}

// A flush stores the steps that started, in the order they started (the
// order of BuildKit's updates: the cache hits of one update share a start
// time), not the order BuildKit first listed them (last stage first).
func TestStoreStepsInStartOrder(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	got := storeSteps([]steps.Step{
		{Digest: "run", Name: "[2/2] RUN", Started: t0, Completed: t0, Cached: true},
		{Digest: "listed", Name: "not started yet"},
		{Digest: "copy", Name: "[1/2] COPY", Started: t0, Completed: t0, Cached: true},
		{Digest: "clock", Name: "clock stepped back", Started: t0.Add(time.Second), Completed: t0.Add(time.Second - time.Millisecond)},
	}, map[string]int{"kiln": 0, "copy": 1, "run": 2, "clock": 3})
	var order []string
	for _, s := range got {
		order = append(order, s.Digest)
		if s.CompletedAt.Before(s.StartedAt) && !s.CompletedAt.IsZero() {
			t.Errorf("%s ends before it starts", s.Digest)
		}
	}
	if want := "copy|run|clock"; strings.Join(order, "|") != want {
		t.Errorf("stored %s, want %s", strings.Join(order, "|"), want)
	}
}

// The recorder notes the order steps start in from BuildKit's updates.
func TestRecorderStartOrder(t *testing.T) {
	rec := &recorder{Recorder: steps.NewRecorder(true), started: map[string]int{}}
	rec.Begin("kiln:context", "[kiln] context")
	now := time.Now()
	d := func(s string) digest.Digest { return digest.FromString(s) }
	rec.Observe(&bkclient.SolveStatus{Vertexes: []*bkclient.Vertex{{Digest: d("run"), Name: "RUN"}, {Digest: d("copy"), Name: "COPY"}}})
	rec.Observe(&bkclient.SolveStatus{Vertexes: []*bkclient.Vertex{
		{Digest: d("copy"), Name: "COPY", Started: &now, Completed: &now, Cached: true},
		{Digest: d("run"), Name: "RUN", Started: &now, Completed: &now, Cached: true}}})
	stepsNow, _, _ := rec.Drain()
	var order []string
	for _, s := range storeSteps(stepsNow, rec.startOrder()) {
		order = append(order, s.Name)
	}
	if want := "[kiln] context|COPY|RUN"; strings.Join(order, "|") != want {
		t.Errorf("stored %s, want %s", strings.Join(order, "|"), want)
	}
}
