package runner

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/project"
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

// Steps are stored in the order the builder first mentioned them, which for
// BuildKit is a solve's vertices up front, last stage first. A watcher sends
// them in the order they started (readers number steps on first sight, as
// buildx does), ends in the order they ended, and a step that never started
// not at all.
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
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := "start d1|start d2|start d3|end d1|end d2|end d3"; strings.Join(got, "|") != want {
		t.Errorf("step events %s, want %s", strings.Join(got, "|"), want)
	}
}
