package runner

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/blob"
	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/project"
	"github.com/kiln-dev/kiln/internal/store"
)

// testStores opens a SQLite store and a local blob store in a temp dir.
func testStores(t *testing.T) (*store.SQLite, *blob.Local, string) {
	t.Helper()
	dir := t.TempDir()
	st, err := store.OpenSQLite(context.Background(), filepath.Join(dir, "kiln.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	blobs, err := blob.NewLocal(blob.LocalConfig{Root: filepath.Join(dir, "blobs"), Secret: []byte(strings.Repeat("s", 32)),
		BaseURL: func() string { return "http://127.0.0.1:1" }})
	if err != nil {
		t.Fatal(err)
	}
	return st, blobs, dir
}

// After a crash, Start fails the source builds the store still says are
// running or pushing (their solve died with the server), leaves client
// builds alone, and runs the queued ones.
func TestStartReconcilesAfterCrash(t *testing.T) {
	ctx := context.Background()
	st, blobs, dir := testStores(t)
	st.CreateOrganization(ctx, project.Organization{ID: "o1", Name: "o1"})
	st.CreateProject(ctx, project.Project{ID: "p1", OrgID: "o1", Name: "p1"})
	now := time.Now().UTC()
	mk := func(id string, status build.Status, kind build.Kind) {
		spec := Spec{ContextKey: "ctx_gone", Dockerfile: "Dockerfile", Platforms: []string{"linux/amd64"}}.encode()
		if err := st.CreateBuild(ctx, build.Build{ID: id, ProjectID: "p1", OrgID: "o1", Status: status, Kind: kind, Spec: spec,
			CreatedAt: now, LastHealthAt: now}); err != nil {
			t.Fatal(err)
		}
	}
	mk("running", build.Running, build.KindSource)
	mk("pushing", build.Pushing, build.KindSource)
	mk("queued", build.Queued, build.KindSource)
	mk("client", build.Running, build.KindClient)

	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	builds := build.NewService(st, nil, nil, build.Config{}, logger)
	r, err := New(st, blobs, builds, &project.Service{Store: st}, Config{WorkDir: filepath.Join(dir, "work"),
		SecretsKey: []byte(strings.Repeat("k", 32)), Logger: logger, RegistryHost: func() string { return "127.0.0.1:1" }})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer r.Close(ctx)
	for _, id := range []string{"running", "pushing"} {
		b, _ := st.GetBuild(ctx, id)
		if b.Status != build.Failed || !strings.Contains(b.Error, "interrupted") || !strings.Contains(b.Error, "RebuildBuild") {
			t.Errorf("%s after restart: %s %q", id, b.Status, b.Error)
		}
	}
	if b, _ := st.GetBuild(ctx, "client"); b.Status != build.Running {
		t.Errorf("a client build was touched: %s", b.Status)
	}
	// The queued build ran: its context is gone, so it fails saying so.
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, _ := st.GetBuild(ctx, "queued")
		if b.Terminal() {
			if b.Status != build.Failed || !strings.Contains(b.Error, `context "ctx_gone" not found`) {
				t.Errorf("queued build ended %s %q", b.Status, b.Error)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the queued build is still %s", b.Status)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Contexts whose retention ended are deleted with their blobs; others stay.
func TestSweepContextsDeletesExpired(t *testing.T) {
	ctx := context.Background()
	st, blobs, _ := testStores(t)
	now := time.Now().UTC()
	for _, c := range []store.Context{
		{Key: "ctx_old", ProjectID: "p1", BlobKey: "contexts/p1/ctx_old", ExpiresAt: now.Add(-time.Minute)},
		{Key: "ctx_never_uploaded", ProjectID: "p1", BlobKey: "contexts/p1/ctx_never_uploaded", ExpiresAt: now.Add(-time.Minute)},
		{Key: "ctx_new", ProjectID: "p1", BlobKey: "contexts/p1/ctx_new", ExpiresAt: now.Add(time.Hour)},
	} {
		c.OrgID, c.CreatedAt = "o1", now.Add(-time.Hour)
		if err := st.CreateContext(ctx, c); err != nil {
			t.Fatal(err)
		}
		if c.Key != "ctx_never_uploaded" {
			if err := blobs.Put(ctx, c.BlobKey, strings.NewReader("data"), 4); err != nil {
				t.Fatal(err)
			}
		}
	}
	r := &Runner{store: st, blobs: blobs, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if err := r.SweepContexts(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := st.GetContext(ctx, "ctx_old"); err == nil {
		t.Error("the expired context's record is still there")
	}
	if _, err := blobs.Stat(ctx, "contexts/p1/ctx_old"); err == nil {
		t.Error("the expired context's blob is still there")
	}
	if _, err := st.GetContext(ctx, "ctx_never_uploaded"); err == nil {
		t.Error("an expired context that was never uploaded is still recorded")
	}
	if _, err := blobs.Stat(ctx, "contexts/p1/ctx_new"); err != nil {
		t.Errorf("a retained context's blob was deleted: %v", err)
	}
	if _, err := st.GetContext(ctx, "ctx_new"); err != nil {
		t.Errorf("a retained context's record was deleted: %v", err)
	}
}
